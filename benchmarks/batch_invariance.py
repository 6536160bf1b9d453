"""Batch invariance of ``codec.encode``: the fraction of identical codes per RVQ layer when each clip is
encoded alone vs inside one padded batch of clips of mixed lengths, in fp32 and under bf16 autocast,
on the CPU and (when available) CUDA.

Default model: the released-size architecture (../shared/golden/full/config.yaml) with random
weights and k-means-initialised codebooks (as benchmarks/gpu_check.py's tokenize part; all-zero
codebooks would give code 0 everywhere). ``--checkpoint`` loads real weights instead, e.g. the golden
tiny model:

    python benchmarks/batch_invariance.py --clips 4 --seconds 6
    python benchmarks/batch_invariance.py --config ../shared/golden/tiny_a/config.yaml \\
        --checkpoint ../shared/golden/tiny_a/model.ckpt --clips 8 --seconds 10 --modes fast padded
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import gpu_check as gc  # noqa: E402 - benchmarks/ helpers: synth_speech, batch_invariance

DEFAULT_CONFIG = os.path.join(HERE, "..", "..", "shared", "golden", "full", "config.yaml")


def build(config: str, checkpoint, device: torch.device, clips, seed: int):
    from xytok import load_codec

    torch.manual_seed(seed)
    codec = load_codec(config, checkpoint, device=device)
    if checkpoint is None:  # k-means-initialise the codebooks on these clips' pre-quantizer frames
        n = min(c.numel() for c in clips)
        with torch.no_grad():
            x = torch.stack([c[:n] for c in clips]).to(device)
            mel, mel_len = codec.wav_to_mel(x, torch.full((x.shape[0],), n, device=device))
            down = codec.tokenize(mel, mel_len)["downsample_output"][:, :, : n // gc.CODE_HOP]
            codec.quantizer.init_codebooks(down)
    return codec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="codec YAML [default: the released architecture]")
    p.add_argument("--checkpoint", default=None, help="weights (default: random + k-means codebooks)")
    p.add_argument("--clips", type=int, default=4, help="clips per batch [default: %(default)s]")
    p.add_argument("--seconds", type=float, default=6.0, help="longest clip; clip j is 0.24 j s shorter")
    p.add_argument("--modes", nargs="+", default=["fast"], choices=["fast", "padded"])
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = a.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rng = np.random.default_rng(a.seed)
    n = max(2, int(round(a.seconds * gc.SAMPLE_RATE / gc.CODE_HOP))) * gc.CODE_HOP
    full = [torch.from_numpy(gc.synth_speech(n, rng)) for _ in range(a.clips)]
    clips = gc.mixed_lengths(full)
    print(f"{a.clips} clips of {', '.join(f'{c.numel() / gc.SAMPLE_RATE:.2f}' for c in clips)} s; config {a.config}"
          f"{'' if a.checkpoint else ' (random weights, k-means codebooks)'}")
    print(f"{'device':<7} {'mode':<7} {'dtype':<5} {'identical':>9} {'all layers':>10}  per RVQ layer")
    for dev in devices:
        device = torch.device(dev)
        codec = build(a.config, a.checkpoint, device, full, a.seed)
        for mode in a.modes:
            for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                t0 = time.time()
                r = gc.batch_invariance(codec, clips, dtype, mode)
                print(f"{dev:<7} {mode:<7} {name:<5} {r['overall']:9.4f} {r['all_layers']:10.4f}  "
                      f"{' '.join(f'{x:.4f}' for x in r['per_layer'])}  ({r['frames']} frames, "
                      f"{time.time() - t0:.1f} s)", flush=True)
        del codec
    return 0


if __name__ == "__main__":
    sys.exit(main())
