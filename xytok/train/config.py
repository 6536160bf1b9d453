"""Training configuration: trainer defaults, YAML loading, deep merging and --a.b=value overrides.

Resolution order (later wins): TRAINER_DEFAULTS < the task's default_config < the user YAML <
command-line overrides. ``config_changes`` lists what differs between two resolved configs (a
resumed run records them in config_changes.log).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

import yaml

# Trainer defaults; a task's default_config and the user YAML are merged on top (in that order).
TRAINER_DEFAULTS: Dict[str, Any] = {
    "task": "stage1",
    "seed": 0,
    "max_steps": 1000,
    "max_epochs": 1000000,
    "grad_accum": 1,
    "grad_clip": 1.0,
    # A step whose loss or gradient norm is NaN/Inf is skipped (no optimizer / LR / codebook update,
    # counted as `nonfinite_skipped`); this many skipped steps in a row stop the run.
    "max_nonfinite_steps": 10,
    "amp": "none",  # none | bf16 | fp16 (GPU only; CPU always runs fp32)
    "log_interval": 10,
    "valid_interval": 500,
    "save_interval": 500,
    "keep_last": 5,
    "num_workers": 2,
    "find_unused_parameters": False,
    "deterministic": False,
    "tensorboard": True,
    "valid_at_start": False,
    "optim": {"type": "adamw", "lr": 2.0e-4, "betas": [0.9, 0.99], "eps": 1.0e-8, "weight_decay": 0.0},
    "scheduler": {"type": "cosine", "warmup_steps": 100, "min_lr_ratio": 0.1},
    "data": {
        "train": None,
        "valid": None,
        "max_frames": 6000,       # padded mel frames (100 Hz) per batch (after cropping)
        "max_batch_size": 32,
        # null = whole utterances (required with the ASR loss: its text must match the audio);
        # a number = random crop of that many seconds (reconstruction only, multiple of 0.08 s)
        "crop_seconds": None,
        "valid_crop_seconds": None,
        "max_utt_seconds": 30.0,  # whole utterances longer than this are dropped (counted, logged)
        "use_feats": False,       # true: read stage-3 feats.scp; false: log-mel on the training device
        "min_seconds": 0.32,
        "valid_max_utts": 200,
        "bucket_size": 100,
    },
}


def deep_merge(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_by_dotted_key(config: Dict[str, Any], dotted: str, value: Any) -> None:
    """config["a"]["b"] = value for "a.b" (dashes in keys become underscores, as on a CLI)."""
    keys = dotted.replace("-", "_").split(".")
    node = config
    for k in keys[:-1]:
        if k not in node or node[k] is None:
            node[k] = {}
        if not isinstance(node[k], dict):
            raise ValueError(f"--{dotted}: {k!r} is not a section in the config (it is {node[k]!r})")
        node = node[k]
    node[keys[-1]] = value


def parse_overrides(args: List[str]) -> Dict[str, Any]:
    """['--a.b', '3', '--c=x'] -> {'a.b': 3, 'c': 'x'} with YAML-typed values."""
    out: Dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise ValueError(f"unexpected argument {a!r}: overrides look like --key value or --key=value")
        key = a[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ValueError(f"override {a} has no value")
            raw = args[i + 1]
            i += 2
        out[key] = _parse_value(raw)
    return out


def _parse_value(raw: str):
    """YAML typing, plus floats like 1e-5 that YAML 1.1 leaves as strings."""
    if raw == "":
        return ""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def load_config(path: Optional[str], overrides: Dict[str, Any], task_defaults=None) -> Dict[str, Any]:
    user = {}
    if path:
        with open(path) as f:
            user = yaml.safe_load(f) or {}
        if not isinstance(user, dict):
            raise ValueError(f"{path}: a training config must be a YAML mapping")
    config = deep_merge(TRAINER_DEFAULTS, task_defaults or {})
    config = deep_merge(config, user)
    for k, v in overrides.items():
        set_by_dotted_key(config, k, v)
    return config



def _flatten(config: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    out: Dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, dotted))
        else:
            out[dotted] = value
    return out


_ABSENT = "<absent>"


def config_changes(old: Dict[str, Any], new: Dict[str, Any]) -> List[tuple]:
    """[(dotted key, old value, new value)] for every leaf that differs (sorted by key);
    a key missing on one side shows as '<absent>'."""
    a, b = _flatten(old or {}), _flatten(new or {})
    return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)]
