"""GPU checks and measurements of xytok, one run, one summary (benchmarks/gpu_check.sh calls this).

Parts (``--parts``, comma-separated, all by default):
  ddp         the egs/mini debug stage-1 config under ``torchrun --nproc_per_node 1`` with
              ``--ngpu 1`` on a synthetic data dir: NCCL initialised? losses finite? steps/s.
  paper_bf16  the paper-size stage-1 config (egs/librispeech/conf/train_stage1.yaml, 519.6 M codec
              + a random-weight Qwen2.5-0.5B-sized LM built offline) with bf16 autocast on synthetic
              10-20 s whole utterances at the config's batch (data.max_frames / max_batch_size):
              steady steps/s, hours of audio per GPU-hour, peak CUDA memory.
  tokenize    batched ``codec.encode`` of the paper architecture (random weights, k-means-initialised
              codebooks) in fp32 and under bf16 autocast: throughput (audio s per s) and the fraction
              of identical codes per RVQ layer and overall; batch invariance: the fraction of
              identical codes, fp32 and bf16, of clips of mixed lengths encoded alone vs in one
              padded batch.

Every part has its own time limit; a failing part is reported in the summary with its error and
the others still run; the exit status is 1 if any part failed. Results go to ``--out`` (default
$OUT, else /tmp/xytok_gpu_check/out): summary.json and each training part's train.log. Without
CUDA (and ``--device cuda``) it prints "no GPU: skipping GPU checks" and exits 0.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --parts ddp,paper_bf16,tokenize

``--device cpu`` runs the same code on the CPU as a smoke test (ddp with gloo; paper_bf16 only with a
small ``--paper_config`` and ``--paper_lm tiny``). Beyond torch, transformers (+ tokenizers), numpy,
scipy and pyyaml, the parts import soundfile (audio I/O) and, for the validation CER, jiwer.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
PARTS = ("ddp", "paper_bf16", "tokenize")
DEBUG_CONFIG = REPO / "egs" / "mini" / "conf" / "train_stage1_debug.yaml"
PAPER_CONFIG = REPO / "egs" / "librispeech" / "conf" / "train_stage1.yaml"
SAMPLE_RATE = 16000
CODE_HOP = 1280  # samples per 12.5 Hz code frame: synthetic clips are whole frames (no trimming)

# Qwen2.5-0.5B's architecture (its config.json on the hub); weights are random here (no network).
QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                  max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                  hidden_act="silu", use_sliding_window=False, bos_token_id=151643, eos_token_id=151643)
# A tiny Qwen2 of the same code path, for CPU tests.
QWEN_TINY = dict(QWEN25_05B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, vocab_size=512, max_position_embeddings=2048)

WORDS = ("the of and to a in that he was it his for with as had you not be her on at by which "
         "have or from this him but all she they were my are me one their so an said them we who "
         "would been will no when there if more out up into do any your what has man could other "
         "than our some very time upon about may its only now like little then can should made did "
         "us such great before must two these see know over much down after first good men own "
         "never most old shall day where those came come himself way work life without go make "
         "well through being long say might how am too even under new just again while").split()


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- synthetic data -------------------------------------------------------------------------------
def synth_speech(num_samples: int, rng) -> "np.ndarray":
    """Speech-like test signal: a harmonic source with a drifting f0 (random per clip), syllable-rate
    amplitude modulation and a little noise. Deterministic given rng; never silent."""
    import numpy as np

    t = np.arange(num_samples) / SAMPLE_RATE
    f0 = rng.uniform(90, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    amps = rng.uniform(0.2, 1.0, size=8) / np.arange(1, 9)
    voiced = sum(a * np.sin(k * phase) for k, a in enumerate(amps, 1))
    env = (0.5 * (1 + np.sin(2 * np.pi * rng.uniform(2.5, 5.0) * t + rng.uniform(0, 6.3)))) ** 2
    wav = 0.08 * voiced * env + 0.005 * rng.standard_normal(num_samples)
    return wav.astype(np.float32)


def make_synthetic_datadir(path, num_utts: int, min_seconds: float, max_seconds: float, seed: int = 0,
                           num_spk: int = 4, words_per_second: float = 2.5) -> Dict[str, Any]:
    """A Kaldi data dir of synthetic 16 kHz utterances: wav/*.wav, wav.scp, text (random words, upper
    case like LibriSpeech), utt2spk, spk2utt, utt2num_samples. Lengths are whole 80-ms code frames.
    Returns {"dir", "num_utts", "num_samples" {utt: n}, "total_seconds"}."""
    import numpy as np

    from xytok.audio import write_wav
    from xytok.data.datadir import utt2spk_to_spk2utt, write_table

    if num_utts < 1 or not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need num_utts >= 1 and 0 < min_seconds <= max_seconds, got {num_utts}, "
                         f"{min_seconds}, {max_seconds}")
    path = Path(path)
    (path / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wav_scp, text, utt2spk, lengths = {}, {}, {}, {}
    lo, hi = max(1, round(min_seconds * SAMPLE_RATE / CODE_HOP)), max(1, round(max_seconds * SAMPLE_RATE / CODE_HOP))
    for i in range(num_utts):
        spk = f"spk{i % num_spk:02d}"
        utt = f"{spk}-{i:05d}"
        n = int(rng.integers(lo, hi + 1)) * CODE_HOP
        wav_path = path / "wav" / f"{utt}.wav"
        write_wav(str(wav_path), synth_speech(n, rng), SAMPLE_RATE)
        n_words = max(1, int(round(words_per_second * n / SAMPLE_RATE)))
        wav_scp[utt] = str(wav_path.resolve())
        text[utt] = " ".join(rng.choice(WORDS, size=n_words)).upper()
        utt2spk[utt] = spk
        lengths[utt] = n
    write_table(str(path / "wav.scp"), wav_scp)
    write_table(str(path / "text"), text)
    write_table(str(path / "utt2spk"), utt2spk)
    write_table(str(path / "spk2utt"), utt2spk_to_spk2utt(utt2spk))
    write_table(str(path / "utt2num_samples"), {u: str(n) for u, n in lengths.items()})
    return {"dir": str(path), "num_utts": num_utts, "num_samples": lengths,
            "total_seconds": sum(lengths.values()) / SAMPLE_RATE}


def audio_seconds_per_batch(num_samples: Sequence[int], max_frames: int, max_batch_size: int,
                            bucket_size: int = 100, seed: int = 0) -> float:
    """Mean unpadded audio per training batch, from the trainer's own batching (xytok.data.sampler)."""
    from xytok.data.sampler import make_batches

    lengths = list(num_samples)
    batches = make_batches(lengths, max_frames, max_batch_size, shuffle=True, seed=seed, epoch=0,
                           bucket_size=bucket_size)
    if not batches:
        raise ValueError("no batches")
    return sum(lengths[i] for b in batches for i in b) / len(batches) / SAMPLE_RATE


# -- a random-weight Qwen2 + an offline tokenizer ---------------------------------------------------
def build_random_qwen2(out_dir, sizes: Optional[Dict[str, Any]] = None, dtype: str = "bfloat16",
                       seed: int = 0) -> Dict[str, Any]:
    """Save a random-weight Qwen2ForCausalLM (default: Qwen2.5-0.5B's sizes) and a small byte-level
    BPE tokenizer (trained on WORDS, <|endoftext|> = EOS) in `out_dir`, loadable offline by
    AutoModelForCausalLM / AutoTokenizer, i.e. as `asr.lm.type: hf, name_or_path: out_dir`.
    Byte-level BPE like Qwen's, because AutoTokenizer picks Qwen2Tokenizer from config.json's
    model_type and rebuilds it from the saved vocab + merges (a word-level model would not survive)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = dict(QWEN25_05B if sizes is None else sizes)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(400, sizes["vocab_size"]), special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([" ".join(WORDS[i:i + 12]) for i in range(0, len(WORDS), 3)], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(str(out_dir))
    eos = tok.token_to_id("<|endoftext|>")
    sizes.update(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(seed)
    # Random init of ~0.5 B parameters is much faster on the GPU than on the host's cores.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(Qwen2Config(**sizes))
    model.to(getattr(torch, dtype)).save_pretrained(str(out_dir))
    n_params = sum(p.numel() for p in model.parameters())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the training child needs the memory, not this process
    return {"dir": str(out_dir), "params": n_params, "tokenizer_vocab": tok.get_vocab_size()}


# -- measurements from a training run ----------------------------------------------------------------
_PROGRESS = re.compile(r"step (\d+)/(\d+) .*\| ([0-9.na]+) steps/s, ([0-9.na]+) s/step")
_PEAK = re.compile(r"peak mem ([0-9.]+) GiB")


def steady_steps_per_second(log_text: str, warmup_steps: int = 0) -> Dict[str, Any]:
    """Steps/s between the first progress line at step >= warmup_steps and the last one.

    The trainer's progress line gives `rate = steps since the clock started / elapsed`, so the
    elapsed time at a line is steps * (s/step); the difference of two lines removes the warm-up
    (first batches, cuDNN autotuning, k-means codebook init) that the printed average includes."""
    points = []
    for m in _PROGRESS.finditer(log_text):
        step, rate = int(m.group(1)), float(m.group(3))
        if rate > 0 and math.isfinite(rate):
            points.append((step, step / rate))
    if not points:
        raise ValueError("no training progress lines (step N/M ... steps/s) in the log")
    after = [p for p in points if p[0] >= warmup_steps]
    if len(after) < 2:
        step, elapsed = points[-1]
        return {"steps_per_s": step / elapsed, "from_step": 0, "to_step": step, "includes_warmup": True}
    (s0, e0), (s1, e1) = after[0], after[-1]
    return {"steps_per_s": (s1 - s0) / (e1 - e0) if e1 > e0 else float("nan"), "from_step": s0, "to_step": s1,
            "includes_warmup": False}


_WORLD = re.compile(r"world_size (\d+), device ([^\s,]+)(?:, process group: (\w+) \(DDP (on|off)\))?")


def world_info(log_text: str) -> Dict[str, Any]:
    """xytok.bin.train's `world_size N, device D, process group: B (DDP on|off)` line, parsed
    (backend/ddp None when the log predates that line)."""
    m = _WORLD.search(log_text)
    if not m:
        raise ValueError("no 'world_size N, device D' line in the training log")
    return {"world_size": int(m.group(1)), "device": m.group(2), "backend": m.group(3),
            "ddp": None if m.group(4) is None else m.group(4) == "on"}


def peak_memory_gib(log_text: str) -> Optional[float]:
    values = [float(v) for v in _PEAK.findall(log_text)]
    return max(values) if values else None


def read_train_metrics(exp_dir) -> Dict[str, Any]:
    """Train records of metrics.jsonl: how many, the last loss, and whether every value is finite."""
    path = Path(exp_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics (the run logged no training step)")
    records = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    train = [r for r in records if r.get("split") == "train"]
    bad = sorted({k for r in train for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)})
    return {"train_records": len(train), "last_step": train[-1]["step"] if train else None,
            "first_loss": train[0].get("loss") if train else None,
            "last_loss": train[-1].get("loss") if train else None,
            "all_finite": bool(train) and not bad, "non_finite_keys": bad,
            "valid_records": sum(r.get("split") == "valid" for r in records)}


# -- running a child process with a time limit ----------------------------------------------------------
def run_logged(cmd: List[str], env: Dict[str, str], timeout: float, prefix: str, cwd=None) -> Dict[str, Any]:
    """Run cmd in its own process group, echo its output line by line with a prefix, kill the whole
    group at the time limit. Returns {"rc", "output", "seconds", "timed_out"}."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True, errors="replace")
    lines: List[str] = []

    def pump():
        for line in proc.stdout:
            lines.append(line)
            print(f"  [{prefix}] {line.rstrip()}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=5)
    return {"rc": proc.returncode, "output": "".join(lines), "seconds": time.time() - t0, "timed_out": timed_out}


def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never wait on an unreachable hub
    env.update(extra or {})
    return env


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _train_failure(run: Dict[str, Any], what: str, limit: float) -> str:
    if run["timed_out"]:
        return f"{what}: killed at the time limit ({limit:.0f} s)"
    return f"{what}: exit status {run['rc']}: {error_line(run['output'])}"


_EXC_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?([\w.]*(?:Error|Exception|Interrupt)\w*:.*)$")


def error_line(output: str) -> str:
    """The worker's last exception line (`pkg.SomeError: message`) in a child's output, skipping
    torchrun's own ChildFailedError report; else the last non-empty line."""
    lines = [l.strip() for l in output.splitlines() if l.strip()]
    for line in reversed(lines):
        m = _EXC_LINE.match(line)
        if m and "ChildFailedError" not in line:
            return m.group(1)
    return lines[-1] if lines else "(no output)"


# -- part 1: NCCL DDP run of the debug config -------------------------------------------------------
def part_ddp(args, work: Path, out: Path) -> Dict[str, Any]:
    data = make_synthetic_datadir(work / "data", num_utts=args.ddp_utts, min_seconds=1.0, max_seconds=4.0,
                                  seed=args.seed)
    exp = work / "exp"
    on_gpu = args.device.startswith("cuda")  # --device cpu: the same run with gloo (a CPU smoke test)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "xytok.bin.train", "--ngpu", "1" if on_gpu else "0", "--config", str(DEBUG_CONFIG),
           "--train_data", data["dir"], "--valid_data", data["dir"], "--output_dir", str(exp),
           "--max_steps", str(args.ddp_steps), "--log_interval", "5", "--valid_interval", "100000",
           "--save_interval", "100000", "--num_workers", "2",
           # stage 1 with ASR trains on whole utterances (a crop would cut audio, not its transcript)
           "--data.crop_seconds", "null", "--data.valid_crop_seconds", "null", "--data.valid_max_utts", "16"]
    notes = []
    if not _have("jiwer"):  # valid CER needs jiwer; without it validate losses only
        cmd += ["--valid_cer", "false"]
        notes.append("jiwer missing: validation without CER")
    # NCCL_DEBUG=INFO makes NCCL print its init lines: proof that the NCCL backend really ran.
    env = child_env({"NCCL_DEBUG": "INFO", "NCCL_DEBUG_SUBSYS": "INIT", "OMP_NUM_THREADS": "4"})
    log("ddp: " + " ".join(cmd))
    run = run_logged(cmd, env, args.ddp_limit, "ddp")
    _copy(exp / "train.log", out / "ddp_train.log")
    if run["rc"] != 0:
        raise RuntimeError(_train_failure(run, "torchrun xytok.bin.train", args.ddp_limit))
    text = (exp / "train.log").read_text() if (exp / "train.log").is_file() else run["output"]
    metrics = read_train_metrics(exp)
    rate = steady_steps_per_second(text, warmup_steps=5)
    nccl_init = bool(re.search(r"NCCL INFO|NCCL version", run["output"]))
    world = world_info(text)
    res = {"backend": world["backend"], "ddp": world["ddp"], "world_size": world["world_size"],
           "device": world["device"], "nccl_initialised": nccl_init, "steps": metrics["last_step"],
           "losses_finite": metrics["all_finite"],
           "first_loss": metrics["first_loss"], "last_loss": metrics["last_loss"],
           "valid_records": metrics["valid_records"], "steps_per_s": rate["steps_per_s"],
           "rate_from_step": rate["from_step"], "wall_s": run["seconds"], "notes": notes}
    problems = []
    want = "nccl" if on_gpu else "gloo"
    if world["backend"] not in (None, want):
        problems.append(f"process group backend {world['backend']!r}, expected {want!r}")
    if world["ddp"] is False:
        problems.append("the model was not wrapped in DDP (a 1-process torchrun world should be)")
    if on_gpu and not nccl_init:
        problems.append("NCCL was not initialised (no 'NCCL INFO' lines with NCCL_DEBUG=INFO)")
    if not metrics["all_finite"]:
        problems.append(f"non-finite training values: {metrics['non_finite_keys']}")
    if metrics["last_step"] != args.ddp_steps:
        problems.append(f"last logged step {metrics['last_step']} != max_steps {args.ddp_steps}")
    if problems:
        res["error"] = "; ".join(problems)
    return res


# -- part 2: paper size, bf16 autocast ------------------------------------------------------------------
def part_paper_bf16(args, work: Path, out: Path) -> Dict[str, Any]:
    import yaml

    on_gpu = args.device.startswith("cuda")  # cpu: a smoke test of this part (with --paper_config/--paper_lm)
    with open(args.paper_config) as f:
        conf = yaml.safe_load(f)
    t0 = time.time()
    qwen = build_random_qwen2(work / "random_lm", sizes=QWEN25_05B if args.paper_lm == "qwen2.5-0.5b" else QWEN_TINY)
    log(f"paper_bf16: random Qwen2 ({qwen['params'] / 1e6:.1f} M params) saved in {time.time() - t0:.1f} s")
    t0 = time.time()
    data = make_synthetic_datadir(work / "data", num_utts=args.paper_utts, min_seconds=args.paper_min_seconds,
                                  max_seconds=args.paper_max_seconds,
                                  seed=args.seed + 1)
    log(f"paper_bf16: {data['num_utts']} utterances, {data['total_seconds'] / 3600:.2f} h of audio written "
        f"in {time.time() - t0:.1f} s")
    d = conf["data"]
    per_batch = audio_seconds_per_batch(list(data["num_samples"].values()), int(d["max_frames"]),
                                        int(d["max_batch_size"]), seed=int(conf.get("seed", 0)))
    exp = work / "exp"
    cmd = [sys.executable, "-m", "xytok.bin.train", "--ngpu", "1" if on_gpu else "0", "--config", str(args.paper_config),
           "--train_data", data["dir"], "--output_dir", str(exp), "--amp", "bf16",
           "--max_steps", str(args.paper_steps), "--log_interval", str(args.paper_log_interval),
           "--valid_interval", "1000000", "--save_interval", "1000000", "--keep_last", "1",
           "--whisper_init", "null",  # no hub: random encoders (same sizes, same cost)
           "--asr.lm.name_or_path", qwen["dir"], "--data.crop_seconds", "null", "--data.valid_crop_seconds", "null",
           "--num_workers", str(args.paper_workers), "--tensorboard", "false"]
    log("paper_bf16: " + " ".join(cmd))
    run = run_logged(cmd, child_env({"OMP_NUM_THREADS": "2"}), args.paper_limit, "paper")
    _copy(exp / "train.log", out / "paper_train.log")
    text = (exp / "train.log").read_text() if (exp / "train.log").is_file() else run["output"]
    if run["rc"] != 0 and not (run["timed_out"] and _PROGRESS.search(text)):
        raise RuntimeError(_train_failure(run, "xytok.bin.train (paper size)", args.paper_limit))
    metrics = read_train_metrics(exp)
    rate = steady_steps_per_second(text, warmup_steps=args.paper_warmup)
    sps = rate["steps_per_s"]
    res = {"steps": metrics["last_step"], "losses_finite": metrics["all_finite"],
           "first_loss": metrics["first_loss"], "last_loss": metrics["last_loss"],
           "steps_per_s": sps, "rate_from_step": rate["from_step"], "rate_to_step": rate["to_step"],
           "rate_includes_warmup": rate["includes_warmup"],
           "audio_s_per_step": per_batch, "audio_h_per_gpu_h": per_batch * sps,
           "peak_mem_gib": peak_memory_gib(text),
           "max_frames": d["max_frames"], "max_batch_size": d["max_batch_size"], "wall_s": run["seconds"]}
    params = re.search(r"model 'stage1': ([0-9.]+)M trainable, ([0-9.]+)M frozen", text)
    if params:
        res["params_trainable_M"], res["params_frozen_M"] = float(params.group(1)), float(params.group(2))
    if run["timed_out"]:
        res["error"] = f"killed at the time limit ({args.paper_limit:.0f} s) after step {metrics['last_step']}"
    elif not metrics["all_finite"]:
        res["error"] = f"non-finite training values: {metrics['non_finite_keys']}"
    return res


# -- part 3: batched tokenization, fp32 vs bf16 -------------------------------------------------------
def code_agreement(a: Sequence["torch.Tensor"], b: Sequence["torch.Tensor"]) -> Dict[str, Any]:
    """Fraction of identical codes between two encodings of the same clips (lists of (nq, T) codes):
    per RVQ layer, overall, and of frames whose codes agree in every layer."""
    import torch

    if len(a) != len(b):
        raise ValueError(f"different numbers of items: {len(a)} vs {len(b)}")
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            raise ValueError(f"item {i}: code shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if not a or sum(x.numel() for x in a) == 0:
        raise ValueError("no codes to compare")
    eq = torch.cat([(x == y) for x, y in zip(a, b)], dim=1)  # (nq, total frames)
    return {"per_layer": [float(v) for v in eq.float().mean(1)], "overall": float(eq.float().mean()),
            "all_layers": float(eq.all(0).float().mean()), "frames": int(eq.shape[1])}


def mixed_lengths(wavs: Sequence["torch.Tensor"], step_frames: int = 3) -> List["torch.Tensor"]:
    """Clip j cut by j * step_frames code frames (at least one frame left): lengths differ, and for
    clips of a few seconds or more stay within the 75 % that fast-mode encode pads into one batch."""
    out = []
    for j, w in enumerate(wavs):
        frames = w.numel() // CODE_HOP
        out.append(w[: max(1, frames - j * step_frames) * CODE_HOP])
    return out


def batch_invariance(codec, wavs: Sequence["torch.Tensor"], dtype=None, mode: str = "fast") -> Dict[str, Any]:
    """code_agreement of each clip encoded alone vs all clips in one padded batch (``dtype``: None for
    fp32, else the autocast dtype on the codec's device)."""
    import contextlib

    import torch

    dev = codec.device.type
    ctx = (lambda: torch.autocast(dev, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    longest = max(w.numel() for w in wavs) / SAMPLE_RATE
    with ctx():
        batched = codec.encode(list(wavs), batch_size=len(wavs), mode=mode,
                               max_batch_seconds=len(wavs) * max(30.0, longest) + 1)
    with ctx():
        alone = [codec.encode([w], mode=mode)[0] for w in wavs]
    return code_agreement(alone, batched)


def part_tokenize(args, work: Path, out: Path) -> Dict[str, Any]:
    import contextlib

    import numpy as np
    import torch
    import yaml

    from xytok import load_codec

    device = torch.device(args.device)
    with open(args.tok_config) as f:
        conf = yaml.safe_load(f)
    torch.manual_seed(args.seed)
    codec = load_codec(conf, None, device=device)  # eval mode, random weights, codebooks still zero
    rng = np.random.default_rng(args.seed + 2)
    n = int(round(args.tok_seconds * SAMPLE_RATE / CODE_HOP)) * CODE_HOP
    wavs = [torch.from_numpy(synth_speech(n, rng)) for _ in range(args.tok_clips)]
    audio_s = len(wavs) * n / SAMPLE_RATE
    enc = dict(batch_size=args.tok_batch, max_batch_seconds=args.tok_batch * (n / SAMPLE_RATE) + 1)

    # k-means-initialise the codebooks on these clips' pre-quantizer frames, as training step 0 does
    # (a fresh model's all-zero codebooks give code 0 everywhere, so any comparison would be trivial).
    with torch.no_grad():
        x = torch.stack(wavs[: max(1, min(len(wavs), 32))]).to(device)
        mel, mel_len = codec.wav_to_mel(x, torch.full((x.shape[0],), n, device=device))
        down = codec.tokenize(mel, mel_len)["downsample_output"][:, :, : n // CODE_HOP]
        codec.quantizer.init_codebooks(down)
    del x, mel, down

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(dtype):
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        best, codes = float("inf"), None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.tok_reps):
            sync()
            t0 = time.perf_counter()
            with ctx:
                codes = codec.encode(wavs, **enc)
            sync()
            best = min(best, time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        return codes, best, peak

    with torch.autocast(device.type, dtype=torch.bfloat16):  # warm-up: kernels, autotuning, allocator
        codec.encode(wavs[: min(len(wavs), args.tok_batch)], **enc)
    codec.encode(wavs[: min(len(wavs), args.tok_batch)], **enc)
    c32, t32, m32 = timed(None)
    c16, t16, m16 = timed(torch.bfloat16)
    agree = code_agreement(c32, c16)
    used = [int(torch.unique(torch.cat([c[q] for c in c32])).numel()) for q in range(codec.num_quantizers)]
    mixed = mixed_lengths(wavs[: max(2, args.tok_invariance_clips)])
    inv32 = batch_invariance(codec, mixed, None)
    inv16 = batch_invariance(codec, mixed, torch.bfloat16)
    return {"clips": len(wavs), "clip_s": n / SAMPLE_RATE, "batch": args.tok_batch, "device": str(device),
            "fp32_audio_s_per_s": audio_s / t32, "bf16_audio_s_per_s": audio_s / t16,
            "bf16_speedup": t32 / t16, "fp32_peak_mem_gib": m32, "bf16_peak_mem_gib": m16,
            "identical_codes": agree["overall"], "identical_codes_per_layer": agree["per_layer"],
            "identical_all_layers": agree["all_layers"], "frames": agree["frames"],
            "codes_used_per_layer_fp32": used, "codebook_size": codec.codebook_size,
            "batch_invariance_clips": len(mixed), "batch_invariant_fp32": inv32["overall"],
            "batch_invariant_bf16": inv16["overall"], "batch_invariant_bf16_per_layer": inv16["per_layer"],
            "batch_invariant_fp32_per_layer": inv32["per_layer"]}


# -- driver ------------------------------------------------------------------------------------------------
PART_FUNCS: Dict[str, Callable] = {"ddp": part_ddp, "paper_bf16": part_paper_bf16, "tokenize": part_tokenize}
IN_PROCESS = {"tokenize"}  # the others run children with their own time limit


class PartTimeout(Exception):
    pass


def run_part(name: str, fn: Callable, args, work: Path, out: Path, limit: float) -> Dict[str, Any]:
    """One part with its time limit; any exception becomes {"status": "FAIL", "error": ...}."""
    log(f"=== part {name} (limit {limit:.0f} s) ===")
    t0 = time.time()
    use_alarm = name in IN_PROCESS and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()

    def on_alarm(signum, frame):
        raise PartTimeout(f"time limit of {limit:.0f} s reached")

    if use_alarm:
        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(max(1, int(limit)))
    try:
        res = fn(args, work, out)
        status = "FAIL" if res.get("error") else "ok"
    except BaseException as e:  # noqa: BLE001 - a part must never stop the others
        if isinstance(e, KeyboardInterrupt):
            raise
        res = {"error": f"{type(e).__name__}: {e}"}
        status = "FAIL"
        traceback.print_exc()
    finally:
        if use_alarm:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    res["status"] = status
    res["seconds"] = round(time.time() - t0, 1)
    log(f"part {name}: {status} in {res['seconds']:.1f} s" + (f": {res['error']}" if res.get("error") else ""))
    return res


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


# Shown in the summary table per part (the rest is in summary.json).
HEADLINE = {
    "ddp": ["backend", "ddp", "nccl_initialised", "device", "losses_finite", "steps", "steps_per_s", "first_loss",
            "last_loss"],
    "paper_bf16": ["steps", "steps_per_s", "audio_s_per_step", "audio_h_per_gpu_h", "peak_mem_gib", "losses_finite",
                   "params_trainable_M", "params_frozen_M"],
    "tokenize": ["fp32_audio_s_per_s", "bf16_audio_s_per_s", "bf16_speedup", "identical_codes",
                 "identical_codes_per_layer", "identical_all_layers", "fp32_peak_mem_gib", "bf16_peak_mem_gib",
                 "batch_invariant_fp32", "batch_invariant_bf16", "batch_invariant_bf16_per_layer"],
}


def format_summary(results: Dict[str, Dict[str, Any]], header: str = "") -> str:
    """The one summary: per part its status, time, headline numbers and error."""
    lines = ["=" * 78, "xytok GPU check summary" + (f" ({header})" if header else ""), "=" * 78]
    for name, res in results.items():
        lines.append(f"{name:<11} {res.get('status', '?'):<5} {res.get('seconds', float('nan')):7.1f} s")
        for key in HEADLINE.get(name, []):
            if key in res and res[key] is not None:
                lines.append(f"    {key:<28} {_fmt(res[key])}")
        for note in res.get("notes", []):
            lines.append(f"    note: {note}")
        if res.get("error"):
            lines.append(f"    ERROR: {res['error']}")
    failed = [n for n, r in results.items() if r.get("status") != "ok"]
    lines.append("-" * 78)
    lines.append(f"result: {'FAILED: ' + ', '.join(failed) if failed else 'all parts ok'}")
    return "\n".join(lines)


def _copy(src: Path, dst: Path) -> None:
    try:
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    except OSError as e:
        log(f"could not copy {src} to {dst}: {e}")


def environment() -> Dict[str, Any]:
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "host": os.uname().nodename}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), gpus=torch.cuda.device_count())
        try:  # a tuple in recent torch, an int in old ones
            v = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception as e:  # noqa: BLE001 - informational only
            env["nccl"] = f"unknown ({e})"
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    return env


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of %(default)s")
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/xytok_gpu_check/out",
                   help="results: summary.json, *_train.log [default: $OUT, else %(default)s]")
    p.add_argument("--work", default="/tmp/xytok_gpu_check/work",
                   help="scratch: synthetic data, exp dirs, the random Qwen2 (several GB) [default: %(default)s]")
    p.add_argument("--keep_work", action="store_true", help="keep each part's scratch dir")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test of ddp (gloo) and tokenize "
                                                     "[default: %(default)s]")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("ddp")
    g.add_argument("--ddp_steps", type=int, default=20)
    g.add_argument("--ddp_utts", type=int, default=48)
    g.add_argument("--ddp_limit", type=float, default=120, help="seconds [default: %(default)s]")
    g = p.add_argument_group("paper_bf16")
    g.add_argument("--paper_steps", type=int, default=40)
    g.add_argument("--paper_warmup", type=int, default=10, help="steps excluded from steps/s")
    g.add_argument("--paper_log_interval", type=int, default=5)
    g.add_argument("--paper_utts", type=int, default=384,
                   help="synthetic utterances (~13 batches per epoch at the paper batch; epochs repeat)")
    g.add_argument("--paper_workers", type=int, default=8, help="data loader workers")
    g.add_argument("--paper_limit", type=float, default=240, help="seconds [default: %(default)s]")
    g.add_argument("--paper_config", default=str(PAPER_CONFIG), help="stage-1 config with asr.lm.type hf "
                                                                      "[default: the paper's]")
    g.add_argument("--paper_lm", choices=("qwen2.5-0.5b", "tiny"), default="qwen2.5-0.5b",
                   help="sizes of the random-weight Qwen2 LM (tiny: CPU smoke tests) [default: %(default)s]")
    g.add_argument("--paper_min_seconds", type=float, default=10.0)
    g.add_argument("--paper_max_seconds", type=float, default=20.0)
    g = p.add_argument_group("tokenize")
    g.add_argument("--tok_config", default=str(PAPER_CONFIG), help="YAML with generator_params [default: paper]")
    g.add_argument("--tok_clips", type=int, default=64)
    g.add_argument("--tok_seconds", type=float, default=10.0)
    g.add_argument("--tok_batch", type=int, default=64, help="clips per model call")
    g.add_argument("--tok_reps", type=int, default=2, help="timed repetitions per dtype (best reported)")
    g.add_argument("--tok_invariance_clips", type=int, default=8,
                   help="clips of mixed lengths encoded alone vs batched (batch invariance) [default: %(default)s]")
    g.add_argument("--tok_limit", type=float, default=90, help="seconds [default: %(default)s]")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = [s for s in parts if s not in PARTS]
    if unknown or not parts:
        get_parser().error(f"--parts: unknown part(s) {unknown} (choose from {', '.join(PARTS)})")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no GPU: skipping GPU checks", flush=True)
        return 0
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    log("environment: " + json.dumps(env))
    limits = {"ddp": args.ddp_limit, "paper_bf16": args.paper_limit, "tokenize": args.tok_limit}
    results: Dict[str, Dict[str, Any]] = {}
    t0 = time.time()
    for name in parts:
        part_work = work / name
        shutil.rmtree(part_work, ignore_errors=True)
        part_work.mkdir(parents=True, exist_ok=True)
        results[name] = run_part(name, PART_FUNCS[name], args, part_work, out, limits[name])
        if not args.keep_work:
            shutil.rmtree(part_work, ignore_errors=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    summary = {"environment": env, "total_seconds": round(time.time() - t0, 1), "parts": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(format_summary(results, f"{env.get('gpu', args.device)}, {summary['total_seconds']:.0f} s"), flush=True)
    log(f"wrote {out / 'summary.json'}")
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
