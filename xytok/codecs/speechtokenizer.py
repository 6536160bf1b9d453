"""SpeechTokenizer (fnlp) through the PyPI ``speechtokenizer`` package: 16 kHz, 50 Hz, 8 RVQ
layers of 1024 codes in the released model; layer 0 is the semantic (HuBERT-distilled) one.

Weights: a local directory holding the released ``config.json`` and one ``.pt`` state dict
(``SpeechTokenizer.pt``), or a hub id ``org/name[/subfolder]`` fetched with huggingface_hub
(``fnlp/SpeechTokenizer`` -> its ``speechtokenizer_hubert_avg/`` subfolder).
``num_quantizers`` = n keeps the first n RVQ layers (the semantic layer always comes first).

The package's ``__init__`` also imports its trainer (torchaudio, accelerate, beartype,
lion_pytorch), none of which inference uses; when those are missing we import only its model
module (``speechtokenizer.model``), which needs torch and einops.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import types

import torch

from xytok.codecs.base import Codec, CodecSpecError

INSTALL_HINT = ("pip install 'xytok[speechtokenizer]' (or, next to a torch without a matching torchaudio: "
                "pip install --no-deps speechtokenizer einops)")
RELEASED_SUBFOLDER = "speechtokenizer_hubert_avg"  # fnlp/SpeechTokenizer's HuBERT-avg model
CHECKPOINT_NAME = "SpeechTokenizer.pt"


def import_speechtokenizer_class():
    """speechtokenizer.model.SpeechTokenizer, without the package's trainer imports if they fail."""
    try:
        from speechtokenizer.model import SpeechTokenizer
        return SpeechTokenizer
    except ImportError as e:
        first_error = e
    spec = importlib.util.find_spec("speechtokenizer") if "speechtokenizer" not in sys.modules else None
    if spec is None or not spec.submodule_search_locations:
        raise CodecSpecError(f"the speechtokenizer codec needs the speechtokenizer package: {INSTALL_HINT} "
                             f"({first_error})")
    # a bare package object, so that importing its .model does not run __init__ (the trainer)
    package = types.ModuleType("speechtokenizer")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["speechtokenizer"] = package
    try:
        return importlib.import_module("speechtokenizer.model").SpeechTokenizer
    except ImportError as e:
        sys.modules.pop("speechtokenizer", None)
        raise CodecSpecError(f"cannot import speechtokenizer.model ({e}); {INSTALL_HINT}")


def _local_files(directory: str):
    config = os.path.join(directory, "config.json")
    if not os.path.isfile(config):
        raise CodecSpecError(f"{directory}: no config.json (a SpeechTokenizer model dir holds config.json and "
                             f"{CHECKPOINT_NAME})")
    pts = sorted(f for f in os.listdir(directory) if f.endswith(".pt"))
    if CHECKPOINT_NAME in pts:
        pts = [CHECKPOINT_NAME]
    if len(pts) != 1:
        raise CodecSpecError(f"{directory}: expected one .pt state dict (e.g. {CHECKPOINT_NAME}), found "
                             f"{pts or 'none'}")
    return config, os.path.join(directory, pts[0])


def _hub_files(hub_id: str, revision=None):
    parts = hub_id.strip("/").split("/")
    if len(parts) < 2:
        raise CodecSpecError(f"{hub_id!r} is neither a directory nor a hub id org/name[/subfolder]")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise CodecSpecError(f"downloading {hub_id} needs huggingface_hub (pip install 'xytok[hub]'): {e}")
    errors = []
    for folder in ([sub] if sub else ["", RELEASED_SUBFOLDER]):
        prefix = f"{folder}/" if folder else ""
        try:
            config = hf_hub_download(repo, f"{prefix}config.json", revision=revision)
            return config, hf_hub_download(repo, f"{prefix}{CHECKPOINT_NAME}", revision=revision)
        except Exception as e:  # not found, offline and not cached, ...
            errors.append(f"{prefix or './'}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise CodecSpecError(f"cannot fetch SpeechTokenizer {hub_id} (config.json + {CHECKPOINT_NAME}; offline? give "
                         f"a local dir instead): " + "; ".join(errors))


class SpeechTokenizerCodec(Codec):
    family = "speechtokenizer"

    def __init__(self, name_or_dir: str, device="cpu", revision=None, num_quantizers=None):
        self.name = name_or_dir
        self.device = torch.device(device)
        cls = import_speechtokenizer_class()
        config_path, ckpt_path = (_local_files(name_or_dir) if os.path.isdir(name_or_dir)
                                  else _hub_files(name_or_dir, revision))
        try:
            with open(config_path) as f:
                config = json.load(f)
            model = cls(config)
            model.load_state_dict(torch.load(ckpt_path, map_location="cpu", weights_only=True))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CodecSpecError(f"cannot load SpeechTokenizer from {config_path} + {ckpt_path}: {e}")
        self.model = model.to(self.device).eval()
        self.config = config
        self.sample_rate = int(config["sample_rate"])
        self._hop = int(model.downsample_rate)
        self.frame_rate = self.sample_rate / self._hop
        self.max_quantizers = int(config["n_q"])
        self.num_quantizers = self._check_num_quantizers(num_quantizers)
        self.codebook_sizes = [int(config["codebook_size"])] * self.num_quantizers

    @property
    def hop_length(self) -> int:
        return self._hop

    def _encode_one(self, wav):
        codes = self.model.encode(wav.view(1, 1, -1), n_q=self.num_quantizers)  # (n_q, 1, T)
        return codes[:, 0]

    def _decode_one(self, codes):
        return self._fit_length(self.model.decode(codes.unsqueeze(1)).reshape(-1), codes.shape[1])

    def _embed_one(self, wav):
        # sum of the emitted layers' codewords (the decoder's input), (T, dimension)
        z = self.model.quantizer.decode(self._encode_one(wav).unsqueeze(1))  # (1, D, T)
        return z[0].transpose(0, 1)
