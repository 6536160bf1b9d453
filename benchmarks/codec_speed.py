"""Encode/decode speed and memory of the full-size XY-Tokenizer, fast mode vs the padded reference.

Builds the released config with random weights (codebooks set to random vectors with
``inited=True`` so that codes are non-trivial), then for each clip duration times
``encode``/``decode`` in mode="fast" and mode="padded" in the same run and prints real-time
factors (processing time / audio duration), peak RSS growth and speed-ups. Codes of both modes
are compared (they must be identical).

    python benchmarks/codec_speed.py --durations 3 10 30 120 --threads 2 --reps 1

On a machine shared with other busy processes use --threads 1 (and OMP_NUM_THREADS=1): with
more threads than free cores every small kernel waits for a descheduled thread, which hurts the
short (fast-mode) clips far more than the 30-s padded windows and distorts the comparison.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import threading
import time

import torch

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "golden", "full", "config.yaml")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples the resident set size every 20 ms; ``peak - start`` is the call's memory growth."""

    def __enter__(self):
        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())

    @property
    def delta(self) -> float:
        return self.peak - self.start


def _speech_like(seconds: float, seed: int) -> torch.Tensor:
    """Amplitude-modulated harmonic noise: deterministic, non-silent, no data files needed."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    f0 = 120 + 30 * torch.sin(2 * torch.pi * 0.5 * t)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / 16000
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 8))
    env = 0.5 * (1 + torch.sin(2 * torch.pi * 3 * t)) ** 2
    return (0.05 * voiced * env + 0.01 * torch.randn(n, generator=g)).float()


def _time(fn, reps: int):
    times, out = [], None
    with PeakRSS() as mem:
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), mem.delta, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="released-format YAML (default: %(default)s)")
    parser.add_argument("--durations", type=float, nargs="+", default=[3, 10, 30, 120], help="clip lengths in s")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--reps", type=int, default=1, help="repetitions per measurement (median reported)")
    parser.add_argument("--modes", nargs="+", default=["fast", "padded"], choices=["fast", "padded"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from xytok.codec import build_codec

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    codec = build_codec(args.config).eval()
    with torch.no_grad():
        for q in codec.quantizer.quantizers:
            q.codebook.normal_()
            q.inited.fill_(True)
    n_params = sum(p.numel() for p in codec.parameters())
    print(f"model: {n_params / 1e6:.1f} M parameters, built in {time.perf_counter() - t0:.1f} s, "
          f"RSS {_rss_mb():.0f} MB, threads {args.threads}, reps {args.reps}", flush=True)

    # Warm-up (allocator, kernels, lazy init) so that the first timed row is not penalised.
    warm = _speech_like(2.0, args.seed + 99)
    for mode in args.modes:
        codec.decode(codec.encode([warm], mode=mode), mode=mode)

    rows = []
    for i, dur in enumerate(args.durations):
        wav = _speech_like(dur, args.seed + i)
        # Modes alternate within each repetition so that a load change on a shared machine
        # affects both alike; the median over repetitions is reported.
        times = {m: {"enc": [], "dec": [], "enc_mb": 0.0, "dec_mb": 0.0} for m in args.modes}
        codes_by_mode = {}
        for _ in range(args.reps):
            for mode in args.modes:
                enc_t, enc_mem, codes = _time(lambda: codec.encode([wav], mode=mode), 1)
                dec_t, dec_mem, _ = _time(lambda: codec.decode(codes, mode=mode), 1)
                rec = times[mode]
                rec["enc"].append(enc_t)
                rec["dec"].append(dec_t)
                rec["enc_mb"] = max(rec["enc_mb"], enc_mem)
                rec["dec_mb"] = max(rec["dec_mb"], dec_mem)
                codes_by_mode[mode] = codes[0]
        res = {}
        for mode in args.modes:
            rec = times[mode]
            enc_t, dec_t = statistics.median(rec["enc"]), statistics.median(rec["dec"])
            res[mode] = (enc_t, rec["enc_mb"], dec_t, rec["dec_mb"], codes_by_mode[mode])
            print(f"  {dur:6.1f} s {mode:6s}: encode {enc_t:7.2f} s (RTF {enc_t / dur:.3f}, +{rec['enc_mb']:.0f} MB)  "
                  f"decode {dec_t:7.2f} s (RTF {dec_t / dur:.3f}, +{rec['dec_mb']:.0f} MB)", flush=True)
        same = None
        if len(res) == 2:
            same = torch.equal(res["fast"][4], res["padded"][4])
        rows.append((dur, res, same))

    print()
    header = f"{'dur s':>6} | {'mode':6} | {'enc RTF':>8} | {'enc +MB':>7} | {'dec RTF':>8} | {'dec +MB':>7}"
    print(header)
    print("-" * len(header))
    for dur, res, _ in rows:
        for mode, (enc_t, enc_mem, dec_t, dec_mem, _) in res.items():
            print(f"{dur:6.1f} | {mode:6} | {enc_t / dur:8.3f} | {enc_mem:7.0f} | {dec_t / dur:8.3f} | {dec_mem:7.0f}")
    if all(len(r[1]) == 2 for r in rows):
        print()
        print(f"{'dur s':>6} | {'encode speed-up':>15} | {'decode speed-up':>15} | codes identical")
        for dur, res, same in rows:
            f, p = res["fast"], res["padded"]
            print(f"{dur:6.1f} | {p[0] / f[0]:14.2f}x | {p[2] / f[2]:14.2f}x | {same}")
    print(f"\npeak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if any(same is False for *_, same in rows):
        print("ERROR: fast and padded codes differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
