"""Strict loading of generator checkpoints in the released XY-Tokenizer format.

Accepted files: a torch pickle as the official ``load_from_checkpoint`` reads it
(``{'generator': state_dict}`` or a bare state dict, loaded with ``torch.load(weights_only=True)``),
or a ``.safetensors`` file holding the generator state dict (recognised by its header, whatever
the file name). Weight-norm parameters may be stored
with the legacy names (``<m>.weight_g`` / ``<m>.weight_v``, as released) or with the
parametrization names (``<m>.parametrizations.weight.original0/1``); they are renamed to whatever
the model uses. Anything else that does not match raises :class:`CheckpointMismatchError` naming
the file and the missing / unexpected keys and shape mismatches.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

_LEGACY = ("weight_g", "weight_v")
_PARAM = ("parametrizations.weight.original0", "parametrizations.weight.original1")
_MAX_LISTED = 20


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not match the model built from the config."""


def is_safetensors(path: str | os.PathLike) -> bool:
    """True when ``path`` starts like a safetensors file (8-byte header length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= os.path.getsize(path) - 8


def _read_safetensors(path: str) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ImportError(f"{path}: reading .safetensors weights needs the safetensors package "
                          "(pip install safetensors)") from exc
    try:
        return load_file(path, device="cpu")
    except Exception as exc:  # SafetensorError, truncated header, bad dtype ...
        raise CheckpointMismatchError(f"{path}: cannot be read as a safetensors file ({exc})") from exc


def read_generator_state(path: str | os.PathLike) -> dict:
    """Read ``{'generator': sd}``, a bare state dict or a safetensors file from ``path`` (CPU tensors)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors") or is_safetensors(path):
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointMismatchError(f"{path}: cannot be read as a torch checkpoint ({exc})") from exc
    if isinstance(obj, Mapping) and "generator" in obj:
        obj = obj["generator"]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointMismatchError(
            f"{path}: expected {{'generator': state_dict}} or a state dict of tensors, got "
            f"{type(obj).__name__} with keys {list(obj)[:5] if isinstance(obj, Mapping) else '-'}")
    return dict(obj)


def _rename_weight_norm(state: dict, expected: set) -> dict:
    """Map weight-norm keys between the legacy and the parametrization naming, towards ``expected``."""
    out = {}
    for key, value in state.items():
        new_key = key
        if key not in expected:
            for src, dst in ((_PARAM, _LEGACY), (_LEGACY, _PARAM)):
                for s, d in zip(src, dst):
                    if key.endswith("." + s):
                        candidate = key[: -len(s)] + d
                        if candidate in expected:
                            new_key = candidate
        out[new_key] = value
    return out


def _listing(title: str, items: list) -> str:
    shown = "\n".join(f"    {x}" for x in items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"  {title} ({len(items)}):\n{shown}{more}"


def load_state_strict(model: nn.Module, state: Mapping, source: str = "<state dict>") -> None:
    """Load ``state`` into ``model`` requiring exactly its key set and shapes.

    Raises CheckpointMismatchError listing missing keys, unexpected keys and shape mismatches.
    """
    own = model.state_dict()
    state = _rename_weight_norm(dict(state), set(own))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{source}: checkpoint does not match the model built from the config"]
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if shapes:
            parts.append(_listing("shape mismatches", shapes))
        raise CheckpointMismatchError("\n".join(parts))
    model.load_state_dict(state, strict=True)


def load_generator_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Read ``path`` and load it strictly into ``model`` (see module docstring)."""
    load_state_strict(model, read_generator_state(path), source=os.fspath(path))


def _strip_prefix(state: Mapping, prefixes=("module.", "codec.", "generator.")) -> dict:
    """Accept DDP-saved or wrapped state dicts by stripping one common leading prefix."""
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def codec_weights(sources: Mapping, what: str = "checkpoint") -> dict:
    """The codec state dict inside a checkpoint's models: ``{'generator': sd}`` (released format,
    stage 2) or a stage-1 training checkpoint's models, where the codec sits under ``codec.`` next to
    the ASR branch (dropped). ``what`` names the source in messages (e.g. "--init_param")."""
    import logging

    if "generator" in sources:
        return _strip_prefix(sources["generator"])
    for name, model_sd in sources.items():
        codec_sd = {k[len("codec."):]: v for k, v in getattr(model_sd, "items", lambda: [])()
                    if k.startswith("codec.")}
        if codec_sd:
            logging.getLogger("xytok.train").info("%s: codec weights taken from model %r (ASR branch dropped)",
                                                  what, name)
            return codec_sd
    raise ValueError(f"{what}: no codec weights in the checkpoint (it has {sorted(sources)}; expected "
                     "'generator' (released format) or a stage-1 checkpoint with 'codec.*' keys)")


# ------------------------------------------------------------------------------------ writing
def atomic_write(path: Path, write, before_replace=None) -> None:
    """``write(tmp_path)`` then rename onto ``path``: a killed export never leaves a partial file.

    ``before_replace()`` runs once the temp file is complete and synced, just before the rename
    (the training checkpoint keeps its previous version there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _plain_state(state: Mapping) -> dict:
    # safetensors refuses tensors that share memory and non-contiguous views: give each its own copy.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_generator_safetensors(state: Mapping, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write a generator state dict as safetensors (key names unchanged; see load_state_strict)."""
    from safetensors.torch import save_file

    meta = {"format": "pt", "content": "xytok generator state_dict"}
    meta.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    tensors = _plain_state(state)
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def save_generator_checkpoint(state: Mapping, path: str | os.PathLike) -> None:
    """Write ``{'generator': state_dict}`` (the released pickle format) atomically."""
    tensors = _plain_state(state)
    atomic_write(Path(path), lambda tmp: torch.save({"generator": tensors}, tmp))


def write_codec_config(generator_params: Mapping, path: str | os.PathLike) -> None:
    """config.yaml in the released layout: ``sample_rate`` + ``generator_params``."""
    import copy

    import yaml

    params = copy.deepcopy(dict(generator_params))
    conf = {"sample_rate": int(params.get("sample_rate", 16000)), "generator_params": params}

    def write(tmp):
        with open(tmp, "w") as f:
            yaml.safe_dump(conf, f, sort_keys=False)

    atomic_write(Path(path), write)
