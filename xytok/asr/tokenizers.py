"""Text tokenizers behind one interface: encode(str) -> list[int], decode(ids) -> str, eos_id, vocab_size."""
from __future__ import annotations

from pathlib import Path
from typing import List


class SentencePieceTokenizer:
    """The recipe-stage-4 model (pad=0, unk=1, no bos/eos); EOS is appended as id = piece count."""

    def __init__(self, model_path: str, lowercase: bool = False):
        import sentencepiece as spm

        if not Path(model_path).exists():
            raise FileNotFoundError(f"sentencepiece model not found: {model_path} (run recipe stage 4)")
        self.sp = spm.SentencePieceProcessor(model_file=str(model_path))
        self.lowercase = lowercase
        self.eos_id = self.sp.get_piece_size()
        self.vocab_size = self.eos_id + 1
        self.num_pieces = self.eos_id  # without the appended EOS (a CTC head needs no EOS)
        self.pad_id = self.sp.pad_id()

    def encode(self, text: str) -> List[int]:
        return list(self.sp.encode(text.lower() if self.lowercase else text))

    def decode(self, ids: List[int]) -> str:
        return self.sp.decode([i for i in ids if 0 <= i < self.eos_id])


class CharTokenizer:
    """Letters, apostrophe and space of the lower-cased transcript; id 0 is reserved (pad = CTC blank).

    Other characters are dropped (LibriSpeech-style transcripts have none). For the CTC head."""

    CHARS = " '" + "abcdefghijklmnopqrstuvwxyz"

    def __init__(self):
        self.index = {c: i + 1 for i, c in enumerate(self.CHARS)}
        self.pad_id = 0
        self.num_pieces = len(self.CHARS) + 1
        self.eos_id = self.num_pieces
        self.vocab_size = self.num_pieces + 1

    def encode(self, text: str) -> List[int]:
        return [self.index[c] for c in " ".join(text.lower().split()) if c in self.index]

    def decode(self, ids: List[int]) -> str:
        return " ".join("".join(self.CHARS[i - 1] for i in ids if 0 < i <= len(self.CHARS)).split()).upper()


class HFTokenizer:
    """transformers AutoTokenizer (e.g. Qwen2.5's); no special tokens added to the transcript."""

    def __init__(self, name_or_path: str, lowercase: bool = False):
        from transformers import AutoTokenizer

        from xytok.hub import resolve_pretrained

        path, kwargs = resolve_pretrained(name_or_path, "HF tokenizer")  # local dir / HF_HUB_OFFLINE
        self.tok = AutoTokenizer.from_pretrained(path, **kwargs)
        self.lowercase = lowercase
        eos = self.tok.eos_token_id
        if eos is None:
            eos = self.tok.pad_token_id
        if eos is None:
            raise ValueError(f"tokenizer {name_or_path} has neither an eos nor a pad token to end transcripts")
        self.eos_id = int(eos)
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> List[int]:
        return list(self.tok.encode(text.lower() if self.lowercase else text, add_special_tokens=False))

    def decode(self, ids: List[int]) -> str:
        return self.tok.decode([i for i in ids if i != self.eos_id], skip_special_tokens=True)
