"""Where a pretrained part (Whisper, the ASR LLM) comes from: a local directory or the HF hub.

``resolve_pretrained(name_or_path)`` returns the source to give ``from_pretrained`` and the extra
keyword arguments:
  - an existing directory is used as is, with ``local_files_only=True`` (never a hub call);
  - something that is clearly a path (``/x``, ``./x``, ``~/x``, ``a/b/c``) but does not exist is an
    error naming it, instead of a confusing "repository not found" from the hub;
  - a hub name (``openai/whisper-small``) gets ``local_files_only=True`` when ``HF_HUB_OFFLINE``
    (or ``TRANSFORMERS_OFFLINE``) is set, so that an offline node uses its cache even if the
    variable was set after huggingface_hub was imported.
Stdlib only; the training path wraps the loads in distributed.local_rank_zero_first().
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Tuple

_TRUE = {"1", "on", "yes", "true"}


def hf_offline(env: Optional[Mapping[str, str]] = None) -> bool:
    env = os.environ if env is None else env
    return any(env.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a slash, or rooted/relative, is a path.
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or name in (".", "..")


def resolve_pretrained(name_or_path, what: str = "pretrained model",
                       env: Optional[Mapping[str, str]] = None) -> Tuple[str, Dict[str, bool]]:
    """(source, from_pretrained kwargs) for a hub name or a local directory; see the module doc."""
    name = os.fspath(name_or_path)
    if not name:
        raise ValueError(f"{what}: empty name or path")
    local = os.path.expanduser(name)
    if os.path.isdir(local):
        return local, {"local_files_only": True}
    if os.path.exists(local):
        raise NotADirectoryError(f"{what} {name!r} is a file; expected a hub name or a directory written "
                                 "by save_pretrained (config.json + weights)")
    if _looks_like_path(name):
        raise FileNotFoundError(f"{what} {name!r}: no such directory (expected a hub name such as "
                                "org/model, or a directory written by save_pretrained)")
    return name, ({"local_files_only": True} if hf_offline(env) else {})


def offline_hint(env: Optional[Mapping[str, str]] = None) -> str:
    """Text appended to a load error when the hub is switched off."""
    return (" (HF_HUB_OFFLINE is set, so only the local Hugging Face cache was searched: fetch the "
            "model once with network access, or give a local directory)") if hf_offline(env) else ""
