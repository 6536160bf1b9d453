"""ASR supervision: [audio prefix][<start>] t_1 .. t_n -> predict t_1 .. t_n <eos> (teacher forcing).

Cross-entropy only on text positions; the audio prefix (adapter output of the quantised features)
carries no labels. A learned <start> embedding separates audio from text so that no tokenizer needs
a BOS token (the stage-4 sentencepiece model has none; Qwen has none by default).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from xytok.asr.adapter import AudioToLMAdapter
from xytok.asr.lm import HFCausalLM, SmallDecoderLM
from xytok.asr.tokenizers import CharTokenizer, HFTokenizer, SentencePieceTokenizer

log = logging.getLogger("xytok.asr")


class ASRBranch(nn.Module):
    def __init__(self, adapter: AudioToLMAdapter, lm: nn.Module, tokenizer, max_text_tokens: int = 256,
                 decode_tokens_per_frame: Optional[float] = 1.5, decode_min_tokens: int = 8,
                 text_dropout: float = 0.0):
        super().__init__()
        # Teacher-forcing input tokens zeroed with this probability in training: a small LM then
        # cannot just continue the text prior and must read the audio prefix (debug configs learn
        # audio-conditioned transcripts much sooner). 0 = plain teacher forcing.
        self.text_dropout = float(text_dropout)
        self.adapter = adapter
        self.lm = lm
        self.tokenizer = tokenizer
        self.max_text_tokens = max_text_tokens
        # Greedy decoding stops an item after min_tokens + tokens_per_frame * (its feature frames):
        # an untrained model never emits EOS and would otherwise cost max_text_tokens LM passes.
        # 1.5 per 12.5 Hz frame = 18.75 tokens/s, above any speaking rate for BPE (or even
        # character) tokens; None disables the bound.
        self.decode_tokens_per_frame = decode_tokens_per_frame
        self.decode_min_tokens = int(decode_min_tokens)
        self.start_embed = nn.Parameter(torch.randn(lm.hidden_size) * 0.02)
        # A frozen hub LM is not part of our checkpoints (it is reloaded from its name/path):
        # drop its keys on save and accept their absence on load.
        self._frozen_lm = isinstance(lm, HFCausalLM) and not any(p.requires_grad for p in lm.parameters())
        if self._frozen_lm:
            self._register_state_dict_hook(_drop_frozen_lm_keys)
            self.register_load_state_dict_post_hook(_ignore_missing_frozen_lm_keys)

    def encode_text(self, texts: List[str]) -> List[List[int]]:
        out = []
        for t in texts:
            ids = self.tokenizer.encode(t)
            if len(ids) > self.max_text_tokens:
                ids = ids[: self.max_text_tokens]
            out.append(ids)
        return out

    def _sequences(self, prefix: torch.Tensor, prefix_lengths: torch.Tensor, tokens: List[List[int]]):
        """Right-padded inputs_embeds (B, L, D), attention mask (B, L), labels (B, L) with -100."""
        device = prefix.device
        rows, labels = [], []
        for i, ids in enumerate(tokens):
            a = int(prefix_lengths[i])
            ids_t = torch.tensor(ids, dtype=torch.long, device=device)
            parts = [prefix[i, :a], self.start_embed.to(prefix.dtype).unsqueeze(0)]
            if ids:
                emb = self.lm.embed(ids_t).to(prefix.dtype)
                if self.training and self.text_dropout > 0:
                    keep = torch.rand(len(ids), device=device) >= self.text_dropout
                    emb = emb * keep.unsqueeze(1).to(emb.dtype)
                parts.append(emb)
            rows.append(torch.cat(parts, 0))
            lab = torch.full((a + 1 + len(ids),), -100, dtype=torch.long, device=device)
            lab[a: a + len(ids)] = ids_t
            lab[a + len(ids)] = self.tokenizer.eos_id
            labels.append(lab)
        lengths = torch.tensor([r.shape[0] for r in rows], device=device)
        embeds = nn.utils.rnn.pad_sequence(rows, batch_first=True)
        labels = nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)
        mask = torch.arange(embeds.shape[1], device=device).unsqueeze(0) < lengths.unsqueeze(1)
        return embeds, mask, labels

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor, texts: List[str]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """feats (B, C, T) quantised features -> (CE loss over text tokens + eos, stats)."""
        prefix, prefix_lengths = self.adapter(feats, feat_lengths)
        embeds, mask, labels = self._sequences(prefix, prefix_lengths, self.encode_text(texts))
        logits = self.lm(embeds, mask)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        with torch.no_grad():
            valid = labels != -100
            acc = (logits.argmax(-1)[valid] == labels[valid]).float().mean()
        return loss, {"asr_acc": acc}

    @torch.no_grad()
    def decode_budget(self, feat_lengths: torch.Tensor, max_new_tokens: Optional[int] = None) -> torch.Tensor:
        """Per-item maximum number of generated tokens (LongTensor (B,)), from the feature length."""
        cap = int(max_new_tokens or self.max_text_tokens)
        lengths = feat_lengths.detach().long().cpu()
        if self.decode_tokens_per_frame is None:
            return torch.full_like(lengths, cap)
        budget = torch.ceil(lengths.double() * float(self.decode_tokens_per_frame)).long() + self.decode_min_tokens
        return budget.clamp(min=1, max=cap)

    def greedy_decode(self, feats: torch.Tensor, feat_lengths: torch.Tensor, max_new_tokens: Optional[int] = None) -> List[str]:
        """Greedy transcripts for a batch: one LM forward per generated token for all items at once
        (no KV cache: fine for a few validation utterances). Items stay right-padded; each item's
        next token is read at its own last position and written right after it. Each item stops
        at EOS or after `decode_budget` tokens (bounded by its audio length and max_new_tokens)."""
        budget = self.decode_budget(feat_lengths, max_new_tokens).to(feats.device)
        max_new_tokens = int(budget.max()) if budget.numel() else 0
        prefix, prefix_lengths = self.adapter(feats, feat_lengths)
        batch, _, dim = prefix.shape
        lengths = prefix_lengths.to(prefix.device).long() + 1  # audio + <start>
        total = int(lengths.max()) + max_new_tokens
        seq = prefix.new_zeros(batch, total, dim)
        for i in range(batch):
            a = int(prefix_lengths[i])
            seq[i, :a] = prefix[i, :a]
            seq[i, a] = self.start_embed.to(prefix.dtype)
        done = torch.zeros(batch, dtype=torch.bool, device=prefix.device)
        out: List[List[int]] = [[] for _ in range(batch)]
        rows = torch.arange(batch, device=prefix.device)
        for t in range(max_new_tokens):
            cur = int(lengths.max())
            mask = torch.arange(cur, device=prefix.device).unsqueeze(0) < lengths.unsqueeze(1)
            logits = self.lm(seq[:, :cur], mask)
            nxt = logits[rows, lengths - 1].argmax(-1)
            done = done | (nxt == self.tokenizer.eos_id) | (budget <= t)
            if bool(done.all()):
                break
            emb = self.lm.embed(nxt).to(seq.dtype)
            for i in range(batch):
                if not done[i]:
                    out[i].append(int(nxt[i]))
                    seq[i, int(lengths[i])] = emb[i]
            lengths = lengths + (~done).long()
        return [self.tokenizer.decode(ids) for ids in out]


def _drop_frozen_lm_keys(module, state_dict, prefix, local_metadata):
    for k in [k for k in state_dict if k.startswith(prefix + "lm.")]:
        del state_dict[k]
    return state_dict


def _ignore_missing_frozen_lm_keys(module, incompatible_keys):
    missing = incompatible_keys.missing_keys
    for k in [k for k in missing if ".lm.model." in "." + k or k.startswith("lm.model.")]:
        missing.remove(k)


def build_asr_branch(conf: Dict[str, Any], in_dim: int) -> nn.Module:
    lm_conf = dict(conf.get("lm", {}))
    kind = lm_conf.pop("type", "decoder")
    lowercase = bool(conf.get("lowercase", False))
    if kind == "ctc":  # debug stand-in for the LLM: CTC head on the quantised features (xytok/asr/ctc.py)
        from xytok.asr.ctc import CTCASRHead

        units = lm_conf.get("units", "char")
        if units == "char":
            tokenizer = CharTokenizer()
        elif units == "piece":
            model_path = conf.get("tokenizer", {}).get("model")
            if not model_path:
                raise ValueError("asr.lm.type=ctc, units=piece needs asr.tokenizer.model (the stage-4 bpe.model)")
            tokenizer = SentencePieceTokenizer(model_path, lowercase=lowercase)
        else:
            raise ValueError(f"asr.lm.units must be char or piece, got {units!r}")
        return CTCASRHead(in_dim, tokenizer,
                          d_model=int(lm_conf.get("d_model", 256)), num_layers=int(lm_conf.get("num_layers", 2)),
                          num_heads=int(lm_conf.get("num_heads", 4)), ffn_dim=int(lm_conf.get("ffn_dim", 1024)),
                          upsample=int(lm_conf.get("upsample", 4)), dropout=float(lm_conf.get("dropout", 0.1)))
    if kind == "hf":
        name = lm_conf.get("name_or_path")
        if not name:
            raise ValueError("asr.lm.type=hf needs asr.lm.name_or_path (e.g. Qwen/Qwen2.5-0.5B or a local dir)")
        tokenizer = HFTokenizer(conf.get("tokenizer", {}).get("name_or_path") or name, lowercase=lowercase)
        lm = HFCausalLM(name, freeze=bool(lm_conf.get("freeze", True)), dtype=lm_conf.get("dtype", "float32"))
    elif kind == "decoder":
        tok_conf = conf.get("tokenizer", {})
        model_path = tok_conf.get("model")
        if not model_path:
            raise ValueError("asr.lm.type=decoder needs asr.tokenizer.model (the stage-4 bpe.model)")
        tokenizer = SentencePieceTokenizer(model_path, lowercase=lowercase)
        lm = SmallDecoderLM(
            tokenizer.vocab_size, d_model=int(lm_conf.get("d_model", 256)), num_layers=int(lm_conf.get("num_layers", 4)),
            num_heads=int(lm_conf.get("num_heads", 4)), ffn_dim=int(lm_conf.get("ffn_dim", 1024)),
            max_positions=int(lm_conf.get("max_positions", 1024)), dropout=float(lm_conf.get("dropout", 0.1)),
        )
    else:
        raise ValueError(f"unknown asr.lm.type {kind!r} (decoder | hf | ctc)")
    ad = conf.get("adapter", {})
    adapter = AudioToLMAdapter(
        in_dim, lm.hidden_size, d_model=int(ad.get("d_model", 256)), num_layers=int(ad.get("num_layers", 2)),
        num_heads=int(ad.get("num_heads", 4)), ffn_dim=int(ad.get("ffn_dim", 1024)), stride=int(ad.get("stride", 1)),
        dropout=float(ad.get("dropout", 0.0)),
    )
    per_frame = conf.get("decode_tokens_per_frame", 1.5)
    return ASRBranch(adapter, lm, tokenizer, max_text_tokens=int(conf.get("max_text_tokens", 256)),
                     decode_tokens_per_frame=None if per_frame is None else float(per_frame),
                     decode_min_tokens=int(conf.get("decode_min_tokens", 8)),
                     text_dropout=float(conf.get("text_dropout", 0.0)))
