"""CTC ASR head on the quantised features: the debug-size stand-in for the LLM branch.

The paper's text supervision is a pretrained (frozen) LLM reading the quantised features: its loss
pulls text into the tokens from the first step. A small LM trained from scratch (lm.type: decoder)
first has to learn language and alignment, which a few CPU minutes do not allow. `lm.type: ctc`
keeps the same place in the graph (post-RVQ adapter output -> ASR loss back into the quantiser and
encoders) with an alignment-free objective that learns in minutes:

  post (B, C, T) at 12.5 Hz -> Linear -> ConvTranspose1d (x `upsample`, distinct sub-frames) ->
  Transformer encoder -> Linear -> CTC over characters (lm.units: char, default) or the stage-4
  sentencepiece pieces (units: piece); blank = <pad> = id 0.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def ctc_collapse(ids, blank: int = 0) -> List[int]:
    """Greedy CTC labels -> units: merge repeats, then drop blanks."""
    out, prev = [], blank
    for i in ids:
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out


def edit_distance(ref, hyp) -> int:
    """Levenshtein distance between two sequences (substitutions, insertions, deletions cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


class CTCASRHead(nn.Module):
    def __init__(self, in_dim: int, tokenizer, d_model: int = 256, num_layers: int = 2, num_heads: int = 4,
                 ffn_dim: int = 1024, upsample: int = 4, dropout: float = 0.1):
        super().__init__()
        if tokenizer.pad_id != 0:
            raise ValueError("the CTC head uses <pad> (id 0) as blank: the tokenizer must have pad_id 0")
        self.tokenizer = tokenizer
        self.upsample = int(upsample)
        self.input_proj = nn.Linear(in_dim, d_model)
        # Transposed conv: each 12.5 Hz frame becomes `upsample` different vectors, so CTC can emit
        # more than one piece per code frame (a transformer without positions would copy them).
        self.up = nn.ConvTranspose1d(d_model, d_model, self.upsample, stride=self.upsample) if self.upsample > 1 else None
        layer = nn.TransformerEncoderLayer(d_model, num_heads, ffn_dim, dropout=dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False) if num_layers > 0 else None
        self.norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, tokenizer.num_pieces)

    def log_probs(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.input_proj(feats.transpose(1, 2))
        lengths = feat_lengths.to(h.device).long()
        if self.up is not None:
            h = self.up(h.transpose(1, 2)).transpose(1, 2)
            lengths = lengths * self.upsample
        if self.encoder is not None:
            pad = torch.arange(h.shape[1], device=h.device).unsqueeze(0) >= lengths.unsqueeze(1)
            h = self.encoder(h, src_key_padding_mask=pad)
        return self.output(self.norm(h)).float().log_softmax(-1), lengths

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor, texts: List[str]):
        """-> (CTC loss averaged over target units, {"ctc_acc": 1 - unit error rate of the greedy
        decode against the reference units over the batch, clipped at 0}).

        Not the LM branch's `asr_acc` (teacher-forced next-token accuracy): a different quantity,
        so a different key."""
        logp, lengths = self.log_probs(feats, feat_lengths)
        # No truncation: a cut transcript would no longer match its audio (CTC needs both whole).
        targets = [self.tokenizer.encode(t) for t in texts]
        flat = torch.tensor([i for ids in targets for i in ids], dtype=torch.long, device=logp.device)
        target_lengths = torch.tensor([len(ids) for ids in targets], dtype=torch.long, device=logp.device)
        loss = F.ctc_loss(logp.transpose(0, 1), flat, lengths, target_lengths, blank=0, reduction="mean",
                          zero_infinity=True)
        with torch.no_grad():
            best = logp.argmax(-1).cpu()
            errors = sum(edit_distance(ids, ctc_collapse(best[i, : int(lengths[i])].tolist()))
                         for i, ids in enumerate(targets))
            units = sum(len(ids) for ids in targets)
            acc = torch.tensor(max(0.0, 1.0 - errors / max(units, 1)), device=logp.device)
        return loss, {"ctc_acc": acc}

    @torch.no_grad()
    def greedy_decode(self, feats: torch.Tensor, feat_lengths: torch.Tensor, max_new_tokens=None) -> List[str]:
        logp, lengths = self.log_probs(feats, feat_lengths)
        best = logp.argmax(-1).cpu()
        return [self.tokenizer.decode(ctc_collapse(best[i, : int(lengths[i])].tolist()))
                for i in range(best.shape[0])]


__all__ = ["CTCASRHead", "ctc_collapse", "edit_distance"]
