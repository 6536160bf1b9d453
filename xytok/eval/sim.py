"""Speaker similarity (SIM): cosine of speaker embeddings of reference and reconstruction.

Backends:
- `resemblyzer` (offline default; weights ship in the wheel): `preprocess_wav(wav, 16000)` (volume
  normalisation + VAD trimming + resampling as the library does) then `VoiceEncoder.embed_utterance`.
- `wavlm`: a Hugging Face WavLM x-vector model (`WavLMForXVector`), default
  `microsoft/wavlm-base-plus-sv`, or any local directory saved with `save_pretrained`.
  Papers (SimWhisper-Codec, the XY evaluation) use WavLM-TDNN "wavlm_large_finetune"; that checkpoint
  is not an HF model, so numbers from the two are close but not identical - state the backend.
- `wavlm_tdnn`: that WavLM-large + ECAPA-TDNN model itself (UniSpeech speaker verification), loaded
  from a local `wavlm_large_finetune.pth` given as the model (xytok.eval.sim_wavlm_tdnn); the
  upstream weights come from the same file, mapped onto transformers' WavLMModel.
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
DEFAULT_MODELS = {"resemblyzer": "resemblyzer-0.1.4-builtin", "wavlm": "microsoft/wavlm-base-plus-sv",
                  "wavlm_tdnn": "wavlm_large_finetune.pth (local path required)"}


class SimError(Exception):
    pass


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0 or not np.isfinite(na * nb):
        raise SimError("zero or non-finite speaker embedding")
    return float(np.dot(a, b) / (na * nb))


class ResemblyzerSim:
    name = "resemblyzer"

    def __init__(self, model: str | None = None, device: str = "cpu"):
        from resemblyzer import VoiceEncoder  # imports librosa/webrtcvad; first call JITs (~30 s)

        self.model_name = DEFAULT_MODELS["resemblyzer"]
        self.encoder = VoiceEncoder(device=device, verbose=False)

    def embed(self, wav: np.ndarray) -> np.ndarray:
        from resemblyzer import preprocess_wav

        processed = preprocess_wav(np.asarray(wav, dtype=np.float32), source_sr=SAMPLE_RATE)
        if processed.size < SAMPLE_RATE // 10:
            raise SimError(f"only {processed.size} samples left after resemblyzer VAD trimming (silence?)")
        return self.encoder.embed_utterance(processed)


class WavLMSim:
    name = "wavlm"

    def __init__(self, model: str | None = None, device: str = "cpu"):
        import torch
        from transformers import AutoFeatureExtractor, WavLMForXVector

        self.model_name = model or DEFAULT_MODELS["wavlm"]
        self.device = torch.device(device)
        self.extractor = AutoFeatureExtractor.from_pretrained(self.model_name)
        self.model = WavLMForXVector.from_pretrained(self.model_name).to(self.device).eval()

    def embed(self, wav: np.ndarray) -> np.ndarray:
        import torch

        inputs = self.extractor(np.asarray(wav, dtype=np.float32), sampling_rate=SAMPLE_RATE,
                                return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            emb = self.model(**inputs).embeddings
        return emb[0].float().cpu().numpy()


class WavLMTdnnSim:
    name = "wavlm_tdnn"

    def __init__(self, model: str | None = None, device: str = "cpu"):
        import torch

        from xytok.eval.sim_wavlm_tdnn import load_wavlm_tdnn

        if not model:
            raise SimError("the wavlm_tdnn backend needs --sim_model PATH/TO/wavlm_large_finetune.pth")
        self.model_name = model
        self.device = torch.device(device)
        self.model = load_wavlm_tdnn(model, device=device)

    def embed(self, wav: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.asarray(wav, dtype=np.float32)).to(self.device)[None]
        with torch.inference_mode():
            emb = self.model(x)
        return emb[0].float().cpu().numpy()


BACKENDS = {"resemblyzer": ResemblyzerSim, "wavlm": WavLMSim, "wavlm_tdnn": WavLMTdnnSim}


def get_sim_backend(name: str, model: str | None = None, device: str = "cpu"):
    if name not in BACKENDS:
        raise ValueError(f"unknown SIM backend {name!r}; choose from {sorted(BACKENDS)}")
    return BACKENDS[name](model=model, device=device)


def speaker_similarity(backend, ref: np.ndarray, deg: np.ndarray) -> float:
    return cosine(backend.embed(ref), backend.embed(deg))
