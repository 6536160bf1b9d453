"""Write RESULTS.md (paper table layout) at the recipe root from scored decode dirs (recipe stage 9/10).

  python -m xytok.bin.make_results --recipe_dir . --exp_dir exp/stage1_mini/decode --test_sets "test"

Each --exp_dir is <model exp>/<inference_tag> holding <test_set>/score/summary.json (from `xytok score`);
the probe result is read from <model exp>/probe/probe.json when present. Plots go to
<exp_dir>/<test_set>/plots/.

A test set decoded from fewer RVQ layers (recipe --decode_num_quantizers "8 4 2") has one
<test_set>/score_nq<n>/ per n; each gets its own row "<name>, nq=<n>" with the bit rate of n layers.
The probe WER (measured on the model's full codes) is printed on the all-layer row only.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("xytok.make_results")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.make_results", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe_dir", default=".", help="recipe root; RESULTS.md is written here")
    p.add_argument("--exp_dir", "--exp", dest="exp_dirs", action="append", required=True,
                   help="decode dir <model exp>/<inference_tag> (repeatable: one row per model)")
    p.add_argument("--name", dest="names", action="append", default=None,
                   help="row label per --exp_dir (default: the model exp dir's name)")
    p.add_argument("--test_sets", default=None,
                   help="space-separated test sets (default: every <exp_dir>/*/score/summary.json)")
    p.add_argument("--output", default="RESULTS.md", help="output file (relative paths are under --recipe_dir)")
    p.add_argument("--no_plots", action="store_true", help="skip histograms / spectrogram")
    p.add_argument("--title", default="RESULTS")
    return p


def stream_info(exp_dir: Path, n: int | None = None) -> dict | None:
    """Bit rate from <exp_dir>/codec_info.json (recipe stage 7: the codec and the codes it wrote,
    xytok.bin.codec_info), for the first n rows when n is given; None when there is no such file."""
    import math

    from xytok.eval.results import load_json

    s = load_json(Path(exp_dir) / "codec_info.json")
    if s is None:
        return None
    sizes = s["codebook_sizes"]
    if n is not None:
        if not 1 <= n <= len(sizes):
            raise ValueError(f"{n} codebooks asked for, the codes hold {len(sizes)}")
        sizes = sizes[:n]
    return {"bps": sum(math.log2(k) for k in sizes) * s["frame_rate"], "frame_rate": s["frame_rate"],
            "nq": len(sizes), "codebook_size": sizes[0] if len(set(sizes)) == 1 else None,
            "model_nq": s["num_quantizers"], "stream": s}


def codecs_section(entries) -> str:
    """RESULTS.md lines on the codecs measured from their token streams (family, rates, BPS) and
    the resampling protocol; empty when no entry has codec_info.json."""
    seen, lines = set(), []
    for e in entries:
        s = e["info"].get("stream")
        if not s or e["name"] in seen:
            continue
        seen.add(e["name"])
        measured = s.get("measured_frame_rate")
        lines.append(f"- {e['name']}: {s['family']} `{s['model']}`, {s['sample_rate']} Hz, "
                     f"{s['num_quantizers']} codebook(s) of {'/'.join(map(str, sorted(set(s['codebook_sizes']))))} "
                     f"at {s['frame_rate']:g} Hz = {s['bps']:g} bps (from the codes"
                     + (f"; measured {measured:.3g} frames/s" if measured else "") + ")")
    if not lines:
        return ""
    return ("\n### Codecs (BPS from the token streams)\n\n" + "\n".join(lines) + "\n\n"
            "Each codec encodes the 16 kHz test audio resampled to its own rate and decodes at that rate; "
            "its output is resampled back to 16 kHz (polyphase, exact ratio) for scoring. "
            "BPS = Σ log2(codebook size) × frame rate over the codebooks the codes hold.\n")


def streaming_section(entries) -> str:
    """RESULTS.md lines for models with a streaming (chunk-causal) decoder: chunk, look-ahead and
    algorithmic latency from the config (xytok.streaming), plus time to first audio / RTF where
    `xytok decode --streaming` wrote <exp_dir>/<test_set>/wav/streaming.json; empty when none."""
    import yaml

    from xytok.streaming import NotStreamableError, latency, spec_from_params

    seen, lines = set(), []
    for e in entries:
        config = e.get("config")
        if not config or e["name"] in seen:
            continue
        seen.add(e["name"])
        try:
            with open(config) as f:
                lat = latency(spec_from_params(yaml.safe_load(f) or {}))
        except (NotStreamableError, OSError, yaml.YAMLError):
            continue
        line = (f"- {e['name']}: chunk {lat['chunk_frames']} code frame(s), look-ahead {lat['lookahead_frames']} "
                f"({lat['code_frame_ms']:g} ms each): algorithmic latency {lat['algorithmic_latency_ms']:.0f} ms "
                f"((chunk + look-ahead) x {lat['code_frame_ms']:g} ms + {lat['istft_tail_ms']:g} ms ISTFT tail)")
        measured = e.get("exp_dir") and (Path(e["exp_dir"]) / e["test_set"] / "wav" / "streaming.json")
        if measured and measured.is_file():
            import json

            m = json.loads(measured.read_text())
            line += (f"; measured by `xytok decode --streaming` ({m['frames_per_push']} frame(s) per push): "
                     f"first audio after {m['first_audio_compute_ms_mean']:.1f} ms of compute (mean), "
                     f"RTF {m['rtf']:.3f}")
        lines.append(line)
    if not lines:
        return ""
    return ("\n### Streaming decoders\n\n" + "\n".join(lines) + "\n\n"
            "A streaming model's offline decode (scored above) equals its stream within 1e-4 "
            "(`XYTokenizer.decode_stream`), so its quality columns hold for the stream. Latency counts codes "
            "arriving in real time (code t when its audio ended); see docs/streaming.md and "
            "benchmarks/streaming.py for CPU time to first audio and RTF.\n")


def gather(exp_dir: Path, test_sets, name: str, recipe_dir: Path, plots: bool) -> list[dict]:
    from xytok.eval.results import codec_info, find_config, find_probe, score_dirs

    sets = test_sets or sorted({p.parent.parent.name for p in exp_dir.glob("*/score*/summary.json")})
    probe = find_probe(exp_dir)
    control = find_probe(exp_dir, "probe_random_init")
    config = find_config(exp_dir, probe)
    full = stream_info(exp_dir) or codec_info(config)
    entries = []
    for ts in sets:
        dirs = score_dirs(exp_dir / ts) or [(exp_dir / ts / "score", None)]
        for score_dir, n in dirs:
            entry = _entry(exp_dir, ts, score_dir, n, name, full, config, probe, control, recipe_dir, plots)
            if entry is not None:
                entries.append(entry)
    return entries


def _entry(exp_dir, ts, score_dir, n, name, full, config, probe, control, recipe_dir, plots):
    from xytok.eval.results import codec_info, load_json

    summary = load_json(score_dir / "summary.json")
    if summary is None:
        log.warning("%s: no summary.json (run stage 9 / xytok score first); skipped", score_dir)
        return None
    all_layers = n is None or (full["model_nq"] is not None and n == full["model_nq"])
    if n is not None:
        try:
            info = stream_info(exp_dir, n) if full.get("stream") else codec_info(config, n)
        except ValueError as e:
            log.warning("%s: %s; skipped", score_dir, e)
            return None
        name = f"{name}, nq={n}"
    else:
        info = full
    plot_dir = exp_dir / ts / ("plots" if n is None else f"plots_nq{n}")
    written = []
    if plots:
        from xytok.eval.inputs import resolve_audio_list
        from xytok.eval.plots import plots_for_score_dir

        try:
            inp = summary.get("inputs", {})
            written = plots_for_score_dir(score_dir, resolve_audio_list(inp["ref"]),
                                          resolve_audio_list(inp["hyp"]), plot_dir, f"{name} {ts}")
        except (OSError, KeyError, ValueError) as e:
            log.warning("%s: plots skipped (%s)", score_dir, e)
    # The probe ran on the model's full codes: its WER belongs to the all-layer row only.
    return {"name": name, "test_set": ts, "summary": summary, "probe": probe if all_layers else None,
            "config": config, "exp_dir": str(exp_dir),
            "probe_control": control if all_layers else None, "info": info,
            "plots": [os.path.relpath(p, recipe_dir) for p in written]}


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from xytok.eval.results import write_results_md

    recipe_dir = Path(args.recipe_dir)
    names = args.names or []
    if names and len(names) != len(args.exp_dirs):
        print("make_results: give one --name per --exp_dir", file=sys.stderr)
        return 2
    test_sets = args.test_sets.split() if args.test_sets else None
    entries = []
    for i, d in enumerate(args.exp_dirs):
        exp_dir = Path(d)
        name = names[i] if names else exp_dir.resolve().parent.name
        entries += gather(exp_dir, test_sets, name, recipe_dir, not args.no_plots)
    if not entries:
        print("make_results: no scored test sets found under " + ", ".join(args.exp_dirs), file=sys.stderr)
        return 1
    output = Path(args.output) if Path(args.output).is_absolute() else recipe_dir / args.output
    text = write_results_md(output, entries, args.title)
    extra = codecs_section(entries) + streaming_section(entries)
    if extra:
        text += extra
        output.write_text(text)
    print(text.split("### Protocol")[0])
    log.info("wrote %s", output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
