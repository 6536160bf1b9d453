"""Where a codec's config and weights come from: a local directory or a Hugging Face hub repo.

``resolve_codec_files(name_or_dir, revision=None)`` -> :class:`CodecFiles` (config path, weights
path). Accepted layouts (first match wins):

  - config: ``config.yaml`` (ours), ``xy_tokenizer_config.yaml`` / ``config/xy_tokenizer_config.yaml``
    (the authors' inference repo);
  - weights: ``model.safetensors``, ``model.ckpt`` (ours), ``xy_tokenizer.ckpt`` (the released
    ``fdugyt/XY_Tokenizer``);
  - a released checkpoint (``xy_tokenizer.ckpt``) without a config file gets the released 16 kHz
    config shipped in ``xytok/configs/xy_tokenizer.yaml`` (the hub repo holds the weights only);
  - a training exp dir (``exp/stage2_x``) resolves to its ``export/``.

Hub ids go through ``huggingface_hub`` (its cache, ``HF_HUB_CACHE``, token and ``HF_HUB_OFFLINE``,
honoured even when set after import, see xytok.hub). Only the chosen files are downloaded.

``save_pretrained(codec, out_dir)`` writes ``config.yaml`` + ``model.safetensors`` (and
``model.ckpt``, the released pickle format, unless ``ckpt=False``).

This module does not import the codec (xytok.codec imports it), so loading stays in load_codec.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from xytok.frontend import HOP_LENGTH
from xytok.hub import hf_offline, offline_hint, resolve_pretrained

logger = logging.getLogger(__name__)

CONFIG_NAMES = ("config.yaml", "xy_tokenizer_config.yaml", "config/xy_tokenizer_config.yaml")
WEIGHT_NAMES = ("model.safetensors", "model.ckpt", "xy_tokenizer.ckpt")
RELEASED_WEIGHTS = "xy_tokenizer.ckpt"
# The released 16 kHz generator config (= generator_params of egs/*/conf/train_stage*.yaml).
RELEASED_CONFIG = Path(__file__).resolve().parent / "configs" / "xy_tokenizer.yaml"


class PretrainedNotFoundError(FileNotFoundError):
    """A directory or hub repo without a usable config + weights pair (the message lists its files)."""


@dataclass(frozen=True)
class CodecFiles:
    config: str          # YAML with generator_params
    weights: str         # .safetensors or .ckpt
    source: str          # what the user gave (dir or hub id), for messages
    bundled_config: bool = False  # config came from xytok/configs (released checkpoint without one)


def _pick(names: Sequence[str], present) -> Optional[str]:
    return next((n for n in names if n in present), None)


def _listing(files: Sequence[str], limit: int = 30) -> str:
    files = sorted(files)
    if not files:
        return "(no files)"
    more = f" ... and {len(files) - limit} more" if len(files) > limit else ""
    return ", ".join(files[:limit]) + more


def _choose(source: str, files: Sequence[str], where: str, ckpt_name: Optional[str] = None):
    """(config name or None for the bundled config, weights name) among ``files``, or a clear error."""
    present = set(files)
    weights = ckpt_name or _pick(WEIGHT_NAMES, present)
    config = _pick(CONFIG_NAMES, present)
    if weights is None:
        raise PretrainedNotFoundError(
            f"{source}: no codec weights in {where} (looked for {', '.join(WEIGHT_NAMES)}); "
            f"found: {_listing(files)}")
    if config is None:
        if os.path.basename(weights) != RELEASED_WEIGHTS:
            raise PretrainedNotFoundError(
                f"{source}: no codec config in {where} (looked for {', '.join(CONFIG_NAMES)}); "
                f"found: {_listing(files)}")
    return config, weights


def _local_files(d: Path) -> List[str]:
    return [p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and ".git" not in p.parts][:1000]


def resolve_local_dir(directory, ckpt_name: Optional[str] = None) -> CodecFiles:
    """Config + weights inside a local directory (or its ``export/``: a training exp dir)."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise PretrainedNotFoundError(f"{directory}: no such directory")
    names = set(_local_files(d))
    if _pick(WEIGHT_NAMES, names) is None and (d / "export").is_dir():
        export_names = set(_local_files(d / "export"))
        if _pick(WEIGHT_NAMES, export_names):
            d, names = d / "export", export_names
    config, weights = _choose(os.fspath(directory), sorted(names), f"directory {d}", ckpt_name)
    return _files(os.fspath(directory), d / config if config else None, d / weights)


def _files(source: str, config: Optional[Path], weights: Path) -> CodecFiles:
    if config is None:
        logger.info("%s: no config file beside %s; using the released 16 kHz config %s",
                    source, weights.name, RELEASED_CONFIG)
        return CodecFiles(os.fspath(RELEASED_CONFIG), os.fspath(weights), source, bundled_config=True)
    return CodecFiles(os.fspath(config), os.fspath(weights), source)


def _hub_errors():
    # huggingface_hub.utils exports these from 0.2x to 1.x/2.x alike (huggingface_hub.errors is newer).
    from huggingface_hub import utils

    return utils


def resolve_hub_repo(repo_id: str, revision: Optional[str] = None, cache_dir=None,
                     env: Optional[Mapping[str, str]] = None) -> CodecFiles:
    """Download (or find in the cache) the config + weights of a hub repo; see the module doc."""
    try:
        import huggingface_hub as hf
    except ImportError as exc:
        raise ImportError(f"{repo_id!r} looks like a Hugging Face hub id, which needs huggingface_hub: "
                          "pip install 'xytok[hub]' (or give a local directory)") from exc
    errors = _hub_errors()
    offline = hf_offline(env)
    at = f"{repo_id}@{revision}" if revision else repo_id

    def fetch(name: str) -> Optional[str]:
        try:
            return hf.hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir,
                                      local_files_only=offline)
        except (errors.EntryNotFoundError, errors.LocalEntryNotFoundError):  # absent / not cached
            return None

    try:
        if offline:
            # No listing offline: take the first candidate of each kind that the cache holds.
            got = {n: p for n in CONFIG_NAMES + WEIGHT_NAMES if (p := fetch(n))}
            if not got:
                raise PretrainedNotFoundError(
                    f"{at}: none of {', '.join(CONFIG_NAMES + WEIGHT_NAMES)} is in the local Hugging "
                    f"Face cache ({cache_dir or hf.constants.HF_HUB_CACHE}){offline_hint(env)}")
            config, weights = _choose(at, list(got), "the local cache")
            paths = {n: got[n] for n in (config, weights) if n}
        else:
            files = hf.HfApi().list_repo_files(repo_id, revision=revision)
            config, weights = _choose(at, files, "the hub repo")
            paths = {}
            for n in (config, weights):
                if n:
                    paths[n] = fetch(n)
                    if paths[n] is None:
                        raise PretrainedNotFoundError(f"{at}: {n} is listed but could not be downloaded")
    except errors.RepositoryNotFoundError as exc:
        raise PretrainedNotFoundError(f"{at}: no such hub repo, or it is private/gated and you are not "
                                      f"logged in (huggingface-cli login): {exc}") from exc
    except errors.RevisionNotFoundError as exc:
        raise PretrainedNotFoundError(f"{at}: revision {revision!r} not found: {exc}") from exc
    except errors.OfflineModeIsEnabled as exc:  # HF_HUB_OFFLINE set at import time, but not in env
        raise PretrainedNotFoundError(f"{at}: hub access is disabled (offline mode) and the files "
                                      f"are not cached: {exc}") from exc
    return _files(at, Path(paths[config]) if config else None, Path(paths[weights]))


def resolve_codec_files(name_or_dir, ckpt_path=None, revision: Optional[str] = None, cache_dir=None,
                        env: Optional[Mapping[str, str]] = None) -> CodecFiles:
    """Config + weights for a local directory or a hub id (``org/name``)."""
    source, _ = resolve_pretrained(name_or_dir, what="codec", env=env)  # path-like typos fail here
    if os.path.isdir(source):
        if revision:
            raise ValueError(f"revision={revision!r} is for hub ids; {name_or_dir} is a local directory")
        files = resolve_local_dir(source)
    else:
        files = resolve_hub_repo(source, revision=revision, cache_dir=cache_dir, env=env)
    if ckpt_path is not None:  # explicit weights win over the ones found beside the config
        files = CodecFiles(files.config, os.fspath(ckpt_path), files.source, files.bundled_config)
    return files


RATE_FIELDS = ("input_sample_rate", "output_sample_rate", "encoder_downsample_rate", "decoder_upsample_rate")


def _int_field(p: dict, key: str, source: str):
    value = p.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise ValueError(f"{source}: generator_params.{key} must be a positive integer, got {value!r}")
    return int(value)


def resolve_rates(p: dict, source: str = "<config>") -> dict:
    """The four rate fields of ``generator_params`` ``p``, derived from the module sizes where absent
    and checked where given. Raises ValueError naming ``source`` and the disagreeing fields.

    encoder_downsample_rate = mel hop (160) x acoustic encoder stride x downsample factor;
    decoder_upsample_rate = Vocos hop_size x acoustic decoder stride x upsample stride;
    output_sample_rate = decoder_upsample_rate x code frame rate (input rate / encoder rate).
    The legacy ``sample_rate`` (the released 16 kHz config's one rate) must equal the output rate.
    """
    def kw(section):
        return p.get(f"{section}_kwargs") or {}

    given = {k: _int_field(p, k, source) for k in RATE_FIELDS + ("sample_rate",)}
    input_rate = given["input_sample_rate"] or 16000
    if input_rate != 16000:
        raise ValueError(f"{source}: input_sample_rate {input_rate}: the encoder's Whisper front end works at "
                         "16000 Hz only (a higher output rate is a decoder choice: output_sample_rate)")
    enc = HOP_LENGTH * int(kw("acoustic_encoder").get("stride_size", 2)) * int(kw("downsample").get("avg_pooler", 4))
    dec_frame = int(kw("vocos").get("hop_size", 160)) * int(kw("acoustic_decoder").get("stride_size", 2))
    dec = dec_frame * int(kw("upsample").get("stride", 4))
    problems = []
    if given["encoder_downsample_rate"] not in (None, enc):
        problems.append(f"encoder_downsample_rate {given['encoder_downsample_rate']} but the encoder makes one code "
                        f"frame per {enc} input samples (mel hop {HOP_LENGTH} x acoustic encoder stride x "
                        "downsample avg_pooler)")
    if given["decoder_upsample_rate"] not in (None, dec):
        problems.append(f"decoder_upsample_rate {given['decoder_upsample_rate']} but the decoder makes {dec} samples "
                        f"per code frame (vocos_kwargs.hop_size {kw('vocos').get('hop_size', 160)} x acoustic "
                        f"decoder stride {kw('acoustic_decoder').get('stride_size', 2)} x upsample stride "
                        f"{kw('upsample').get('stride', 4)})")
    if (dec * input_rate) % enc:
        problems.append(f"{dec} output samples per code frame at {input_rate}/{enc} code frames per second is not "
                        "a whole number of samples per second")
    output_rate = dec * input_rate // enc
    if given["output_sample_rate"] not in (None, output_rate):
        problems.append(f"output_sample_rate {given['output_sample_rate']} but the decoder makes {dec} samples per "
                        f"code frame at {input_rate / enc:g} Hz = {output_rate} Hz (24 kHz: vocos n_fft 960 / "
                        "hop_size 240, decoder_upsample_rate 1920; 32 kHz: 1280 / 320, 2560)")
    if given["sample_rate"] not in (None, output_rate):
        problems.append(f"sample_rate {given['sample_rate']} (the legacy name of the output rate) but the decoder "
                        f"makes {output_rate} Hz; set sample_rate: {output_rate} or drop it")
    ad = kw("acoustic_decoder")
    if ad and float(ad.get("sampling_rate", 16000)) / float(ad.get("hop_length", 160)) != input_rate / HOP_LENGTH:
        problems.append(f"acoustic_decoder_kwargs sampling_rate {ad.get('sampling_rate')} / hop_length "
                        f"{ad.get('hop_length')} is not the {input_rate // HOP_LENGTH} Hz frame rate the decoder "
                        "runs at (they size its position table: use e.g. 16000/160 or 24000/240)")
    if problems:
        raise ValueError(f"{source}: inconsistent rate fields in generator_params: " + "; ".join(problems))
    return {"input_sample_rate": input_rate, "output_sample_rate": output_rate,
            "encoder_downsample_rate": enc, "decoder_upsample_rate": dec}


def with_rate_fields(generator_params: Mapping) -> dict:
    """``generator_params`` as written to config.yaml. A model whose output rate is not 16 kHz gets
    the released TTSD rate fields (input_sample_rate, output_sample_rate, encoder_downsample_rate,
    decoder_upsample_rate), checked against its modules, and ``sample_rate`` = its output rate;
    a 16 kHz model's params are written unchanged (the released 16 kHz layout)."""
    params = dict(generator_params)
    rates = resolve_rates(params, "generator_params")
    if rates["output_sample_rate"] == 16000:
        return params
    head = {**rates, "sample_rate": rates["output_sample_rate"]}
    return {**head, **{k: v for k, v in params.items() if k not in head}}


def write_pretrained(state, generator_params, out_dir, ckpt: bool = True,
                     metadata: Optional[dict] = None) -> Path:
    """``model.safetensors`` (+ ``model.ckpt``) from a generator state dict, then ``config.yaml``.

    The config is written last, so a directory with a config has its weights. Training exports
    (xytok.train.stage1/stage2) and ``save_pretrained`` both use this.
    """
    from xytok.checkpoint import save_generator_checkpoint, save_generator_safetensors, write_codec_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator_params = with_rate_fields(generator_params)
    save_generator_safetensors(state, out / "model.safetensors", metadata=metadata)
    if ckpt:
        save_generator_checkpoint(state, out / "model.ckpt")
    write_codec_config(generator_params, out / "config.yaml")
    return out


def save_pretrained(codec, out_dir, ckpt: bool = True, metadata: Optional[dict] = None) -> Path:
    """Write ``config.yaml`` + ``model.safetensors`` (+ ``model.ckpt``) for ``load_codec(out_dir)``."""
    return write_pretrained(codec.state_dict(), codec.generator_params, out_dir, ckpt=ckpt, metadata=metadata)
