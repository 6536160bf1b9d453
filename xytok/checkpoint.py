"""Strict loading of generator checkpoints in the released XY-Tokenizer format.

Accepted files (as the official ``load_from_checkpoint``): ``{'generator': state_dict}`` or a bare
state dict, loaded with ``torch.load(weights_only=True)``. Weight-norm parameters may be stored
with the legacy names (``<m>.weight_g`` / ``<m>.weight_v``, as released) or with the
parametrization names (``<m>.parametrizations.weight.original0/1``); they are renamed to whatever
the model uses. Anything else that does not match raises :class:`CheckpointMismatchError` naming
the file and the missing / unexpected keys and shape mismatches.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn as nn

_LEGACY = ("weight_g", "weight_v")
_PARAM = ("parametrizations.weight.original0", "parametrizations.weight.original1")
_MAX_LISTED = 20


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not match the model built from the config."""


def read_generator_state(path: str | os.PathLike) -> dict:
    """Read ``{'generator': sd}`` or a bare state dict from ``path`` (CPU tensors)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
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
