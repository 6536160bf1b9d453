"""Corpus-level WER/CER with substitution/insertion/deletion counts (alignment by jiwer).

Corpus WER = (S + D + I) / N summed over all utterances: not the mean of per-utterance WERs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import jiwer

from xytok.eval.normalizer import base_language

# Languages written without spaces between words: their primary ASR metric is CER (`auto`).
# Whisper's codes; Korean (spaces between words) stays on WER unless asked (--asr_metric cer).
CER_LANGUAGES = frozenset({"zh", "yue", "ja", "th", "lo", "my", "km", "bo"})
ASR_METRICS = ("auto", "wer", "cer")
CER_DEFINITION = ("corpus CER = (S+D+I)/N over the characters of the normalised texts with spaces removed, "
                  "summed over all scored utterances, jiwer alignment, after one normaliser")
WER_DEFINITION = "corpus WER = (S+D+I)/N over all scored utterances, jiwer alignment, after one normaliser"


def resolve_asr_metric(metric: str = "auto", language: str = "en") -> str:
    """"wer" or "cer": `auto` = cer for a language in CER_LANGUAGES (region ignored: zh-CN -> zh), else wer."""
    if metric not in ASR_METRICS:
        raise ValueError(f"ASR metric must be one of {ASR_METRICS}, got {metric!r}")
    if metric != "auto":
        return metric
    return "cer" if base_language(language) in CER_LANGUAGES else "wer"


@dataclass
class ErrorCounts:
    n_ref: int = 0  # reference words (or characters for CER)
    sub: int = 0
    ins: int = 0
    dele: int = 0
    n_utts: int = 0
    n_sentence_errors: int = 0
    per_utt: dict = field(default_factory=dict)  # utt_id -> (errors, n_ref)

    @property
    def errors(self) -> int:
        return self.sub + self.ins + self.dele

    @property
    def rate(self) -> float:
        """Error rate as a fraction; NaN when there are no reference words."""
        return self.errors / self.n_ref if self.n_ref else float("nan")

    def kaldi_line(self, unit: str = "WER") -> str:
        """Kaldi/sclite form: `%WER 12.34 [ 5 / 40, 1 ins, 2 del, 2 sub ]`."""
        pct = 100.0 * self.rate if self.n_ref else float("nan")
        return (f"%{unit} {pct:.2f} [ {self.errors} / {self.n_ref}, {self.ins} ins, "
                f"{self.dele} del, {self.sub} sub ]")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("per_utt")
        d["del"] = d.pop("dele")
        d["errors"] = self.errors
        d["rate"] = self.rate
        return d


def _count(ref_tokens: list[str], hyp_tokens: list[str]) -> tuple[int, int, int]:
    """(sub, ins, del) of one pair, with jiwer's Levenshtein alignment."""
    if not ref_tokens:
        return 0, len(hyp_tokens), 0  # everything in the hypothesis is an insertion
    if not hyp_tokens:
        return 0, 0, len(ref_tokens)
    out = jiwer.process_words(" ".join(ref_tokens), " ".join(hyp_tokens))
    return out.substitutions, out.insertions, out.deletions


def corpus_error_counts(refs: dict, hyps: dict, normalizer=None, unit: str = "word") -> ErrorCounts:
    """Align each `refs[utt]` with `hyps[utt]` (missing hyp = empty string -> all deletions).

    `unit="char"` gives CER: characters of the normalised text, spaces excluded.
    """
    norm = normalizer or (lambda s: " ".join(s.split()))
    counts = ErrorCounts()
    for utt in sorted(refs):
        ref, hyp = norm(refs[utt]), norm(hyps.get(utt, "") or "")
        if unit == "word":
            r, h = ref.split(), hyp.split()
        elif unit == "char":
            r, h = list(ref.replace(" ", "")), list(hyp.replace(" ", ""))
        else:
            raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
        s, i, d = _count(r, h)
        counts.sub += s
        counts.ins += i
        counts.dele += d
        counts.n_ref += len(r)
        counts.n_utts += 1
        counts.n_sentence_errors += int(s + i + d > 0)
        counts.per_utt[utt] = (s + i + d, len(r))
    return counts
