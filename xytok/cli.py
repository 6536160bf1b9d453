"""The ``xytok`` command: ``xytok <subcommand> [options]`` (also ``python -m xytok``).

Each subcommand lives in its own module ``xytok.bin.<name>`` exposing ``get_parser()`` and
``main(argv=None)``; this file only dispatches, so ``xytok encode ...`` and
``python -m xytok.bin.encode ...`` behave identically.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import List, Optional

# name -> (module, one-line description), in the order shown by --help
SUBCOMMANDS = {
    "encode": ("xytok.bin.encode", "audio (file, directory or wav.scp) -> codes (ark/scp or npy dir)"),
    "decode": ("xytok.bin.decode", "codes (scp or npy dir) -> 16 kHz wavs + wav.scp"),
    "score": ("xytok.bin.score", "reconstruction metrics (WER/CER, PESQ, STOI, SIM) of decoded audio"),
    "export-onnx": ("xytok.bin.export_onnx", "ONNX encoder/decoder graphs (+ parity report vs PyTorch)"),
}


def _usage() -> str:
    from xytok import __version__

    width = max(len(n) for n in SUBCOMMANDS)
    lines = [f"usage: xytok <subcommand> [options]   (xytok {__version__})", "",
             "XY-Tokenizer speech codec tools.", "", "subcommands:"]
    lines += [f"  {n:<{width}}  {desc}" for n, (_, desc) in SUBCOMMANDS.items()]
    lines += ["", "Run 'xytok <subcommand> --help' for the options of one subcommand."]
    return "\n".join(lines)


def _load_subcommand(name: str):
    module_name = SUBCOMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            print(f"xytok {name}: not available: module {module_name} is not part of this "
                  f"installation (yet).", file=sys.stderr)
        else:
            print(f"xytok {name}: missing dependency {e.name!r} ({e}). Install it, e.g. "
                  f"'pip install xytok[all]'.", file=sys.stderr)
        return None


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from xytok import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"xytok: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = _load_subcommand(name)
    if module is None:
        return 2
    ret = module.main(rest)
    return int(ret or 0)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the encode/decode subcommands (model options, logging, failure report).
# ---------------------------------------------------------------------------------------------
logger = logging.getLogger("xytok")


class CLIError(Exception):
    """A fatal, user-facing error: printed as one line, without a traceback."""


def add_model_args(parser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", metavar="[FAMILY:]ID_OR_DIR",
                   help="Hugging Face hub id (e.g. fdugyt/XY_Tokenizer; cached, HF_HUB_OFFLINE=1 reads only "
                   "the cache) or a directory holding config.yaml + model.safetensors/model.ckpt (also the "
                   "released xy_tokenizer.ckpt, or a training exp dir). A FAMILY: prefix picks another codec "
                   "(xytok.codecs): xy (default; xy:released = fdugyt/XY_Tokenizer), dac, encodec, mimi "
                   "(transformers models by hub id or save_pretrained dir, e.g. mimi:kyutai/mimi); those "
                   "work at their own sample rate")
    g.add_argument("--revision", help="with a hub --model: branch, tag or commit")
    g.add_argument("--config", help="model config YAML (released format, generator_params)")
    g.add_argument("--checkpoint", help="model checkpoint (.ckpt; {'generator': state_dict} or a bare state dict)")
    g.add_argument("--model_dir", help="shortcut for --config D/config.yaml --checkpoint D/model.ckpt "
                   "(or D/model.safetensors) "
                   "(e.g. a training exp dir's export/ folder)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda if available)")
    g.add_argument("--num_threads", type=int, default=None,
                   help="torch intra-op CPU threads (default: torch's choice)")
    g.add_argument("--batch_size", type=int, default=1, help="utterances per model call")
    g.add_argument("--overlap_seconds", type=float, default=10.0,
                   help="look-ahead overlap between 30 s windows for long inputs")
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")


def resolve_model_paths(args):
    """(config, checkpoint) from --model, --model_dir or --config/--checkpoint."""
    config, ckpt = args.config, args.checkpoint
    model = getattr(args, "model", None)
    if model and (args.model_dir or config):
        raise CLIError("--model replaces --model_dir/--config: give one of them")
    if getattr(args, "revision", None) and not model:
        raise CLIError("--revision goes with a hub --model")
    if model:
        from xytok.pretrained import resolve_codec_files

        try:
            files = resolve_codec_files(model, ckpt_path=ckpt, revision=args.revision)
        except ImportError as e:
            raise CLIError(str(e))
        except (OSError, ValueError) as e:  # not found / not cached / no config in the repo
            raise CLIError(f"--model {model}: {e}")
        config, ckpt = files.config, files.weights
    if args.model_dir:
        config = config or os.path.join(args.model_dir, "config.yaml")
        if not ckpt:  # model.ckpt (released format) first, as before; a safetensors-only dir works too
            ckpt = os.path.join(args.model_dir, "model.ckpt")
            st = os.path.join(args.model_dir, "model.safetensors")
            if not os.path.isfile(ckpt) and os.path.isfile(st):
                ckpt = st
    if not config:
        raise CLIError("no model given: use --model ID_OR_DIR, --config C --checkpoint K, or --model_dir D")
    if not ckpt:
        raise CLIError("no checkpoint given: use --checkpoint K (or --model_dir D)")
    for what, p in (("config", config), ("checkpoint", ckpt)):
        if not os.path.isfile(p):
            raise CLIError(f"{what} file not found: {p}")
    return config, ckpt


def model_family(args) -> str:
    """The codec family of ``--model [FAMILY:]ID_OR_DIR`` ('xy' without a prefix). For xy the prefix
    is stripped from args.model (xy:released -> the released hub id), so the xy path sees a plain id."""
    model = getattr(args, "model", None)
    if not model:
        return "xy"
    from xytok.codecs import CodecSpecError, parse_spec

    try:
        family, ident = parse_spec(model)
    except CodecSpecError as e:
        raise CLIError(f"--model {model}: {e}")
    if family == "xy":
        from xytok.codecs.xy import RELEASED

        # xy:released is the hub release unless a local ./released (a saved copy) exists
        args.model = RELEASED if ident == "" or (ident == "released" and not os.path.exists(ident)) else ident
        return family
    for opt in ("config", "checkpoint", "model_dir"):
        if getattr(args, opt, None):
            raise CLIError(f"--{opt} is for xy models; --model {model} names its own weights")
    return family


def load_family_codec(args, num_quantizers=None):
    """A non-xy codec (xytok.codecs) from ``--model FAMILY:ID_OR_DIR``; errors become one CLIError."""
    import torch

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.batch_size < 1:
        raise CLIError("--batch_size must be >= 1")
    device = resolve_device(args.device)
    from xytok.codecs import CodecSpecError, load_codec_family

    try:
        codec = load_codec_family(args.model, device=str(device), revision=args.revision,
                                  num_quantizers=num_quantizers)
    except CodecSpecError as e:
        raise CLIError(str(e))
    logger.info("loaded %s model %s: %d Hz, %g Hz frames, %d codebook(s) of %s: %g bps, device %s",
                codec.family, codec.name, codec.sample_rate, codec.frame_rate, codec.num_quantizers,
                "/".join(map(str, sorted(set(codec.codebook_sizes)))), codec.bps(), device)
    return codec, device


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return dev


def quantizer_shape(config_path: str):
    """(num_quantizers, codebook_size) from a released-format config YAML."""
    import yaml

    with open(config_path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    gp = cfg.get("generator_params", cfg) if isinstance(cfg, dict) else None
    try:
        q = gp["quantizer_kwargs"]
        return int(q["num_quantizers"]), int(q["codebook_size"])
    except (TypeError, KeyError) as e:
        raise CLIError(f"{config_path}: not a model config (missing generator_params.quantizer_kwargs: {e})")


def load_model(args):
    """Build the codec from the CLI options; load errors become one clear CLIError."""
    import torch

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.batch_size < 1:
        raise CLIError("--batch_size must be >= 1")
    if not 0 <= args.overlap_seconds < 30:
        raise CLIError("--overlap_seconds must be in [0, 30)")
    config, ckpt = resolve_model_paths(args)
    device = resolve_device(args.device)
    try:
        from xytok.codec import load_codec
    except ImportError as e:
        raise CLIError(f"cannot import the codec (xytok.codec): {e}")
    try:
        codec = load_codec(config, ckpt, device=str(device))
    except Exception as e:  # mismatched keys/shapes, bad YAML, unreadable checkpoint ...
        logger.debug("load_codec failed", exc_info=True)
        from xytok.pretrained import RELEASED_CONFIG

        note = (" (no config came with the weights, so the released 16 kHz config was used: put the "
                "model's config.yaml beside them)") if config == str(RELEASED_CONFIG) else ""
        raise CLIError(f"cannot load the model from config {config} and checkpoint {ckpt}{note}:\n{e}")
    codec.eval()
    logger.info("loaded model: config %s, checkpoint %s, device %s", config, ckpt, device)
    return codec, config, device


def run_isolating_failures(process, batch, what: str, failures, log=None):
    """Run ``process(items) -> results`` on the (utt, item) pairs of ``batch``; if the batched call
    fails, retry one by one so a single bad utterance does not lose the others. Failures are
    appended to ``failures`` as (utt, reason); returns [(utt, result), ...] for the rest."""
    if not batch:
        return []
    try:
        results = process([item for _, item in batch])
        return list(zip([utt for utt, _ in batch], results))
    except Exception as e:
        if len(batch) == 1:
            failures.append((batch[0][0], f"{what} failed: {type(e).__name__}: {e}"))
            return []
        (log or logging.getLogger(__name__)).warning(
            "batch of %d failed (%s); retrying one by one", len(batch), e)
    out = []
    for pair in batch:
        out += run_isolating_failures(process, [pair], what, failures, log)
    return out


def log_throughput(what: str, n_done: int, n_total: int, samples: int, dest: str, start: float,
                   sample_rate: int = 16000) -> None:
    """The closing line of encode/decode: how much was written, where, and the real-time factor."""
    import time

    elapsed = time.time() - start
    audio_s = samples / sample_rate
    logger.info("wrote %s of %d/%d utterance(s) (%.1f s of audio) to %s in %.1f s (RTF %.3f)",
                what, n_done, n_total, audio_s, dest, elapsed, elapsed / max(audio_s, 1e-9))


def report_failures(failures, what: str) -> int:
    """Log every (utt, reason) failure at the end of a run; return the exit status."""
    if not failures:
        return 0
    logger.error("%d %s failed:", len(failures), what)
    for utt, reason in failures:
        logger.error("  %s: %s", utt, reason)
    return 1


def run_main(body, args) -> int:
    """Run a subcommand body; CLIError -> one-line message, exit status 1."""
    try:
        return body(args)
    except CLIError as e:
        logger.error("%s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
