"""Causal language models for the ASR branch, one interface:

  hidden_size, vocab_size, embed(ids) -> (B, L, D), forward(inputs_embeds, attention_mask) -> logits (B, L, V)
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

log = logging.getLogger("xytok.asr")


class SmallDecoderLM(nn.Module):
    """A pre-LN Transformer decoder (causal self-attention only) with learned positions, from scratch."""

    def __init__(self, vocab_size: int, d_model: int = 256, num_layers: int = 4, num_heads: int = 4,
                 ffn_dim: int = 1024, max_positions: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.hidden_size, self.vocab_size, self.max_positions = d_model, vocab_size, max_positions
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(max_positions, d_model)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, ffn_dim, dropout=dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = inputs_embeds.shape[1]
        if length > self.max_positions:
            raise ValueError(f"sequence of {length} tokens exceeds the decoder's max_positions={self.max_positions} "
                             f"(raise asr.lm.max_positions or crop shorter)")
        pos = torch.arange(length, device=inputs_embeds.device)
        h = inputs_embeds + self.position_embedding(pos).unsqueeze(0)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=h.device), diagonal=1)
        h = self.layers(h, mask=causal, src_key_padding_mask=~attention_mask.bool(), is_causal=True)
        return self.lm_head(self.norm(h))


class HFCausalLM(nn.Module):
    """A transformers AutoModelForCausalLM by hub name or local path (paper: Qwen2.5-0.5B, frozen)."""

    def __init__(self, name_or_path: str, freeze: bool = True, dtype: str = "float32"):
        super().__init__()
        from transformers import AutoModelForCausalLM

        from xytok.hub import offline_hint, resolve_pretrained

        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        # a local dir is used as is; HF_HUB_OFFLINE means cache only
        path, kwargs = resolve_pretrained(name_or_path, "asr.lm.name_or_path")
        try:
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
        except OSError as e:
            raise OSError(f"cannot load the ASR LM {name_or_path!r}: {e}{offline_hint()}") from None
        self.hidden_size = self.model.config.hidden_size
        self.vocab_size = self.model.config.vocab_size
        if freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)
            log.info("HF LM %s loaded and frozen", name_or_path)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        dtype = self.model.get_input_embeddings().weight.dtype
        out = self.model(inputs_embeds=inputs_embeds.to(dtype), attention_mask=attention_mask.long(), use_cache=False)
        return out.logits.float()
