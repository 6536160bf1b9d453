"""Pluggable ASR for WER on reference audio and reconstructions (16 kHz mono float input).

- `pocketsphinx`: offline (the model ships with the PyPI wheel), the CI default; weak, LM-bound.
- `whisper`: transformers WhisperForConditionalGeneration, default `openai/whisper-large-v3`,
  transcription (never translation) in the scoring language (`language`, default "en", passed to
  `generate`), greedy; audio longer than 30 s is transcribed whole with Whisper's
  sequential long-form decoding (transformers `generate` on the full log-mel with timestamps: each
  30-s window resumes at the last predicted timestamp, as openai-whisper's `transcribe` does), so
  words at a window edge are not cut (LibriSpeech test-clean has utterances up to 35 s).
- `hubert`: transformers HubertForCTC + Wav2Vec2Processor, default `facebook/hubert-large-ls960-ft`
  (the model codec papers use on LibriSpeech), greedy CTC.
Any local directory saved with `save_pretrained` works as `--asr_model`.
pocketsphinx and hubert are English-only: another language is refused when the backend is built.
"""
from __future__ import annotations

import numpy as np

from xytok.eval.normalizer import base_language

SAMPLE_RATE = 16000
DEFAULT_MODELS = {
    "pocketsphinx": "pocketsphinx-builtin-en-us",
    "whisper": "openai/whisper-large-v3",
    "hubert": "facebook/hubert-large-ls960-ft",
}


def require_english(backend: str, language: str) -> None:
    """ValueError for an English-only backend asked for another language."""
    if base_language(language) != "en":
        raise ValueError(f"the {backend} ASR backend is English-only and cannot transcribe language {language!r}; "
                         "use --asr_backend whisper (a multilingual checkpoint such as openai/whisper-large-v3)")


class PocketsphinxASR:
    name = "pocketsphinx"

    def __init__(self, model: str | None = None, device: str = "cpu", language: str = "en"):
        require_english(self.name, language)
        self.language = "en"
        from pocketsphinx import Decoder

        from importlib.metadata import version

        self.model_name = f"{DEFAULT_MODELS['pocketsphinx']} (pocketsphinx {version('pocketsphinx')})"
        self.decoder = Decoder(logfn="/dev/null", samprate=SAMPLE_RATE)

    def transcribe(self, wav: np.ndarray) -> str:
        pcm = (np.clip(np.asarray(wav, dtype=np.float64), -1.0, 1.0) * 32767).astype("<i2").tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


def whisper_language_kwargs(generation_config, language: str, model_name: str) -> dict:
    """`generate` arguments forcing transcription in `language`. Multilingual checkpoints carry
    lang_to_id: language + task=transcribe (never translation, never language detection). An
    English-only checkpoint (no language tokens) only transcribes English: another language raises."""
    lang_to_id = getattr(generation_config, "lang_to_id", None) or {}
    if not lang_to_id:
        if language != "en":
            raise ValueError(f"Whisper model {model_name} is English-only (its generation config has no language "
                             f"tokens) and cannot transcribe {language!r}; use a multilingual checkpoint "
                             "such as openai/whisper-large-v3")
        return {}
    if f"<|{language}|>" not in lang_to_id:
        known = ", ".join(sorted(k.strip("<|>") for k in lang_to_id))
        raise ValueError(f"Whisper model {model_name} has no language token <|{language}|>; it knows: {known}")
    return {"language": language, "task": "transcribe"}


class WhisperASR:
    name = "whisper"
    window = 30 * SAMPLE_RATE

    def __init__(self, model: str | None = None, device: str = "cpu", max_new_tokens: int = 440,
                 language: str = "en"):
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.model_name = model or DEFAULT_MODELS["whisper"]
        self.language = base_language(language)
        self.device = torch.device(device)
        self.processor = WhisperProcessor.from_pretrained(self.model_name)
        self.model = WhisperForConditionalGeneration.from_pretrained(self.model_name).to(self.device).eval()
        # Whisper's decoder holds max_target_positions tokens including the ~4 prompt tokens.
        self.max_new_tokens = min(max_new_tokens, self.model.config.max_target_positions - 8)
        self.gen_kwargs = whisper_language_kwargs(self.model.generation_config, self.language, self.model_name)

    def transcribe(self, wav: np.ndarray) -> str:
        import torch

        wav = np.asarray(wav, dtype=np.float32)
        fe = self.processor.feature_extractor
        if len(wav) <= self.window:  # short-form: one window, padded to 30 s
            feats = fe(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt")
            kwargs = {}
        else:  # long-form: the whole log-mel, unpadded; generate walks it window by window
            feats = fe(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt", truncation=False,
                       padding="longest", return_attention_mask=True)
            kwargs = {"attention_mask": feats.attention_mask.to(self.device), "return_timestamps": True,
                      "condition_on_prev_tokens": False}
        with torch.inference_mode():
            out = self.model.generate(feats.input_features.to(self.device), max_new_tokens=self.max_new_tokens,
                                      **self.gen_kwargs, **kwargs)
        ids = out["sequences"] if isinstance(out, dict) else out
        return " ".join(self.processor.batch_decode(ids, skip_special_tokens=True)[0].split())


class HubertASR:
    name = "hubert"

    def __init__(self, model: str | None = None, device: str = "cpu", language: str = "en"):
        require_english(self.name, language)
        self.language = "en"
        import torch
        from transformers import HubertForCTC, Wav2Vec2Processor

        self.model_name = model or DEFAULT_MODELS["hubert"]
        self.device = torch.device(device)
        self.processor = Wav2Vec2Processor.from_pretrained(self.model_name)
        self.model = HubertForCTC.from_pretrained(self.model_name).to(self.device).eval()

    def transcribe(self, wav: np.ndarray) -> str:
        import torch

        inputs = self.processor(np.asarray(wav, dtype=np.float32), sampling_rate=SAMPLE_RATE,
                                return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(inputs.input_values.to(self.device)).logits
        ids = logits.argmax(dim=-1)
        return self.processor.batch_decode(ids)[0].strip()


BACKENDS = {"pocketsphinx": PocketsphinxASR, "whisper": WhisperASR, "hubert": HubertASR}


def get_asr_backend(name: str, model: str | None = None, device: str = "cpu", language: str = "en"):
    """ASR backend `name` transcribing `language` (ISO code; a region suffix such as zh-CN is dropped)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown ASR backend {name!r}; choose from {sorted(BACKENDS)}")
    return BACKENDS[name](model=model, device=device, language=language)
