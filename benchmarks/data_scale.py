#!/usr/bin/env python3
"""Does the trainer's memory and start-up time stay flat as the corpus grows?

Builds a synthetic Kaldi data dir of N utterances (wav.scp/text/utt2num_samples whose entries point
at a few real short wav files, as a large corpus's metadata would) and, for each N, runs the real
trainer (`python -m xytok.bin.train`, the mini debug config, 3 steps, CPU) twice: a first run that
converts the dir into its lazy manifest, and a second run that finds it cached. Prints, per N and
run, the trainer's peak RSS (the child's own ru_maxrss) and the time from process start to the first
logged training step.

    python benchmarks/data_scale.py                      # N = 1000 and 2000000 (goal: <= 200 MB more
                                                         # at 2 M; first step within 3 min)
    python benchmarks/data_scale.py --sizes 1000 20000 --workdir /tmp/ds
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORDS = "the birch canoe slid on smooth planks glue sheet to dark blue background it is easy".split()


def make_corpus(root: Path, n: int, n_files: int = 8) -> Path:
    """N utterance entries over n_files real wavs (1.0-3.5 s), metadata only beyond that."""
    import soundfile as sf

    d = root / f"train_{n}"
    if (d / ".done").exists():
        return d
    (d / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n_files):
        length = int(rng.integers(16000, 56000))
        x = (0.2 * np.sin(np.arange(length) * rng.uniform(0.01, 0.1))).astype(np.float32)
        path = d / "wav" / f"f{i}.wav"
        sf.write(path, x, 16000, subtype="PCM_16")
        files.append((str(path), length))
    width = len(str(n))
    with open(d / "wav.scp", "w") as w, open(d / "text", "w") as t, open(d / "utt2num_samples", "w") as u, \
            open(d / "utt2spk", "w") as s:
        for i in range(n):  # ids in C order by construction (zero-padded)
            utt = f"spk{i % 1000:03d}-{i:0{width}d}"
            path, length = files[i % n_files]
            w.write(f"{utt} {path}\n")
            t.write(f"{utt} {' '.join(WORDS[(i + k) % len(WORDS)] for k in range(4))}\n")
            u.write(f"{utt} {length}\n")
            s.write(f"{utt} spk{i % 1000:03d}\n")
    # spk-major ids are not globally sorted when i % 1000 wraps: sort like a real data dir
    for name in ("wav.scp", "text", "utt2num_samples", "utt2spk"):
        subprocess.run(["sort", "-o", str(d / name), str(d / name)], check=True, env=dict(os.environ, LC_ALL="C"))
    (d / ".done").touch()
    return d


def run_trainer(data: Path, out: Path, steps: int) -> dict:
    cmd = [sys.executable, "-m", "xytok.bin.train", "--config", str(REPO / "egs/mini/conf/train_stage1_debug.yaml"),
           "--train_data", str(data), "--output_dir", str(out), "--max_steps", str(steps), "--log_interval", "1",
           "--save_interval", "100000", "--num_workers", "0", "--tensorboard", "false"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, never a resume
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_step = None
    err_lines = []
    for line in proc.stderr:  # the trainer logs each step (log_interval 1); the first one stops the clock
        err_lines.append(line)
        if first_step is None and re.search(r"\bstep\s+1[/ ]", line):
            first_step = time.time() - t0
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or first_step is None:
        raise RuntimeError(f"trainer failed ({proc.returncode}):\n" + "".join(err_lines[-30:]))
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "first_step_s": first_step, "total_s": time.time() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000000], help="corpus sizes (utterances)")
    p.add_argument("--steps", type=int, default=3, help="training steps per run")
    p.add_argument("--workdir", help="where corpora and runs go (default: a temp dir, removed)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="xytok-data-scale-"))
    rows = []
    for n in a.sizes:
        t = time.time()
        data = make_corpus(work, n)
        print(f"[{datetime.now():%H:%M:%S}] N={n}: corpus ready ({time.time() - t:.0f} s)", flush=True)
        # the first run must really convert the dir: drop a cache left by an earlier invocation
        shutil.rmtree(data / "manifest", ignore_errors=True)
        for run in ("first (builds the manifest)", "second (cached manifest)"):
            out = work / f"exp_{n}_{len(rows)}"
            r = run_trainer(data, out, a.steps)
            r.update(n=n, run=run)
            rows.append(r)
            print(f"[{datetime.now():%H:%M:%S}] N={n:>9} {run:<28} peak RSS {r['peak_rss_mb']:8.1f} MB  "
                  f"first step {r['first_step_s']:7.1f} s  total {r['total_s']:7.1f} s", flush=True)
    print("\nN            run                           peak RSS (MB)   first step (s)")
    for r in rows:
        print(f"{r['n']:<12} {r['run']:<29} {r['peak_rss_mb']:>13.1f}   {r['first_step_s']:>14.1f}")
    if len(a.sizes) >= 2:
        lo = [r for r in rows if r["n"] == min(a.sizes)]
        hi = [r for r in rows if r["n"] == max(a.sizes)]
        growth = max(r["peak_rss_mb"] for r in hi) - max(r["peak_rss_mb"] for r in lo)
        worst_first = max(r["first_step_s"] for r in hi)
        print(f"\npeak RSS growth {min(a.sizes)} -> {max(a.sizes)} utterances: {growth:+.1f} MB (goal <= 200 MB); "
              f"first step at {max(a.sizes)}: {worst_first:.1f} s (goal <= 180 s)")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
