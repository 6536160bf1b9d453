"""Loading a transformers audio codec (DacModel, MimiModel, EncodecModel, ...) by hub id or directory."""
from __future__ import annotations

import logging
import os

import torch

from xytok.codecs.base import Codec, CodecSpecError

log = logging.getLogger("xytok.codecs")


def load_hf_model(class_name: str, name_or_dir: str, device="cpu", revision=None):
    """transformers.<class_name>.from_pretrained(name_or_dir) in eval mode on `device`; failures
    become one CodecSpecError naming the model (not found, not cached, wrong model type)."""
    try:
        import transformers
    except ImportError as e:
        raise CodecSpecError(f"the {class_name} codec needs transformers (pip install transformers): {e}")
    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise CodecSpecError(f"transformers {transformers.__version__} has no {class_name}; upgrade transformers")
    if os.path.exists(name_or_dir) and not os.path.isfile(os.path.join(name_or_dir, "config.json")):
        raise CodecSpecError(f"{name_or_dir}: no config.json (a directory written by {class_name}.save_pretrained)")
    try:
        model = cls.from_pretrained(name_or_dir, revision=revision)
    except Exception as e:  # OSError (missing/not cached), ValueError (wrong model type) ...
        raise CodecSpecError(f"cannot load {class_name} from {name_or_dir}: {e}")
    return model.to(torch.device(device)).eval()


class HFCodec(Codec):
    """Shared plumbing of the transformers families: the model, its device and its name."""

    class_name = ""

    def __init__(self, name_or_dir: str, device="cpu", revision=None):
        self.name = name_or_dir
        self.device = torch.device(device)
        self.model = load_hf_model(self.class_name, name_or_dir, device, revision)
        self.config = self.model.config
        self.sample_rate = int(self.config.sampling_rate)
        self.frame_rate = self.frame_rate_of(self.config)
        log.info("loaded %s %s (%s Hz, %g Hz frames) on %s", self.class_name, name_or_dir,
                 self.config.sampling_rate, self.frame_rate_of(self.config), self.device)

    @staticmethod
    def frame_rate_of(config) -> float:
        return float(config.frame_rate)

