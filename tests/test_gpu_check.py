"""benchmarks/gpu_check.{sh,py}: argument parsing, the no-GPU exit, and every part that runs on a CPU
(synthetic data dir, summary, code agreement, log parsing, time limits, the tokenize part on the
debug codec, the offline random Qwen2 + tokenizer that the paper-size part loads)."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
PY = REPO / "benchmarks" / "gpu_check.py"

_spec = importlib.util.spec_from_file_location("gpu_check", PY)
gc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("OUT", None)
    return env


def test_help_of_shell_and_python():
    for cmd in (["bash", str(SCRIPT), "--help"], [sys.executable, str(PY), "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=60)
        assert r.returncode == 0, r.stderr
        assert "--parts" in r.stdout and "paper_bf16" in r.stdout
    assert "--wheels" in subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True,
                                        env=_env(), timeout=60).stdout


def test_bad_part_is_an_argument_error():
    r = subprocess.run([sys.executable, str(PY), "--parts", "ddp,nope"], capture_output=True, text=True,
                       env=_env(), timeout=60)
    assert r.returncode == 2 and "nope" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path taken without a GPU")
def test_no_gpu_says_so_and_exits_0(tmp_path):
    env = _env()
    env["OUT"] = str(tmp_path / "out")
    r = subprocess.run(["bash", str(SCRIPT), "--parts", "ddp,paper_bf16"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no GPU: skipping GPU checks" in r.stdout
    # the shell layer also copies its output to $OUT for the runner that collects it
    assert "no GPU: skipping GPU checks" in (tmp_path / "out" / "gpu_check.log").read_text()


def test_synthetic_datadir(tmp_path):
    from xytok.audio import load_audio
    from xytok.data.datadir import read_table, validate

    info = gc.make_synthetic_datadir(tmp_path / "d", num_utts=5, min_seconds=0.5, max_seconds=1.2, seed=3)
    d = tmp_path / "d"
    assert validate(str(d), no_feats=True) == []  # sorted, consistent Kaldi dir (utt2spk/spk2utt/text/wav.scp)
    lengths = {u: int(n) for u, n in read_table(str(d / "utt2num_samples")).items()}
    assert lengths == info["num_samples"] and len(lengths) == 5
    for utt, entry in read_table(str(d / "wav.scp")).items():
        wav, ainfo = load_audio(entry, utt=utt)
        assert len(wav) == lengths[utt] and len(wav) % gc.CODE_HOP == 0
        assert 0.5 - 0.08 <= len(wav) / 16000 <= 1.2 + 0.08
        assert np.abs(wav).max() > 0.01  # speech-like, not silence
    texts = read_table(str(d / "text"))
    assert all(t and t == t.upper() for t in texts.values())
    assert abs(info["total_seconds"] - sum(lengths.values()) / 16000) < 1e-9
    with pytest.raises(ValueError):
        gc.make_synthetic_datadir(tmp_path / "bad", num_utts=0, min_seconds=1, max_seconds=2)


def test_audio_seconds_per_batch():
    # 10 items of 1 s, max 4 per batch by count, frame budget large: 3 batches (4, 4, 2) -> 10/3 s
    per = gc.audio_seconds_per_batch([16000] * 10, max_frames=100000, max_batch_size=4)
    assert per == pytest.approx(10 / 3)
    # frame budget 250 frames of 100 frames each -> 2 per batch
    assert gc.audio_seconds_per_batch([16000] * 4, max_frames=250, max_batch_size=64) == pytest.approx(2.0)


def test_code_agreement():
    a = [torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]), torch.tensor([[0, 0], [1, 1]])]
    b = [torch.tensor([[1, 2, 3, 0], [5, 0, 0, 8]]), torch.tensor([[0, 0], [1, 2]])]
    r = gc.code_agreement(a, b)
    assert r["per_layer"] == pytest.approx([5 / 6, 3 / 6])
    assert r["overall"] == pytest.approx(8 / 12)
    assert r["all_layers"] == pytest.approx(2 / 6)  # frames 0 and 4 agree in both layers
    assert r["frames"] == 6
    assert gc.code_agreement(a, a)["overall"] == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        gc.code_agreement(a, [b[0], b[1][:, :1]])
    with pytest.raises(ValueError):
        gc.code_agreement(a, a[:1])


def test_steady_rate_from_progress_lines():
    line = ("2026-01-01 00:00:00 [rank0] INFO xytok.train: step {s}/30 (10.0%) epoch 0 | loss=1 | "
            "{r:.3f} steps/s, {p:.3f} s/step, elapsed 0:00:05, ETA 0:00:10{m}")
    log = "\n".join([line.format(s=5, r=0.5, p=2.0, m=", peak mem 10.5 GiB"),      # elapsed 10 s (warm-up)
                     line.format(s=10, r=10 / 12, p=1.2, m=", peak mem 20.0 GiB"),  # elapsed 12 s
                     line.format(s=30, r=30 / 20, p=20 / 30, m="")])              # elapsed 20 s
    r = gc.steady_steps_per_second(log, warmup_steps=10)
    assert r["steps_per_s"] == pytest.approx(20 / 8, rel=1e-3) and r["from_step"] == 10 and r["to_step"] == 30
    assert gc.peak_memory_gib(log) == 20.0
    assert gc.steady_steps_per_second(log, warmup_steps=30)["includes_warmup"]
    with pytest.raises(ValueError):
        gc.steady_steps_per_second("no progress here")


def test_reporter_progress_line_parses():
    from xytok.train.reporter import Reporter

    rep = Reporter(Path("/nonexistent"), enabled=False, use_tensorboard=False)
    rep._t0 -= 4.0
    line = rep.progress_line(8, 20, 0, {"loss": 1.0})
    assert gc.steady_steps_per_second(line)["steps_per_s"] == pytest.approx(2.0, rel=0.05)


def test_world_info():
    log = "2026-01-01 00:00:00 [rank0] INFO xytok.train: world_size 1, device cuda:0, process group: nccl (DDP on)\n"
    assert gc.world_info(log) == {"world_size": 1, "device": "cuda:0", "backend": "nccl", "ddp": True}
    old = "x INFO xytok.train: world_size 1, device cpu\n"
    assert gc.world_info(old) == {"world_size": 1, "device": "cpu", "backend": None, "ddp": None}
    with pytest.raises(ValueError):
        gc.world_info("nothing")


def test_error_line():
    out = ("[rank0]: Traceback (most recent call last):\n[rank0]:   File x\n"
           "[rank0]: xytok.data.manifest.DataError: data.crop_seconds=4 with the ASR loss on\n"
           "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n=====\n  traceback : To enable\n")
    assert gc.error_line(out) == "xytok.data.manifest.DataError: data.crop_seconds=4 with the ASR loss on"
    assert gc.error_line("just text\nlast") == "last"


def test_summary_and_part_failures(tmp_path):
    def ok(args, work, out):
        return {"steps_per_s": 1.5}

    def boom(args, work, out):
        raise RuntimeError("no NCCL here")

    def slow(args, work, out):
        time.sleep(5)
        return {}

    res = {"ddp": gc.run_part("ddp", ok, None, tmp_path, tmp_path, 10),
           "paper_bf16": gc.run_part("paper_bf16", boom, None, tmp_path, tmp_path, 10),
           "tokenize": gc.run_part("tokenize", slow, None, tmp_path, tmp_path, 1)}
    assert res["ddp"]["status"] == "ok"
    assert res["paper_bf16"]["status"] == "FAIL" and "no NCCL here" in res["paper_bf16"]["error"]
    assert res["tokenize"]["status"] == "FAIL" and "time limit" in res["tokenize"]["error"]
    assert res["tokenize"]["seconds"] < 3
    text = gc.format_summary(res)
    assert "steps_per_s" in text and "1.5" in text
    assert "ERROR: RuntimeError: no NCCL here" in text
    assert "FAILED: paper_bf16, tokenize" in text
    assert "all parts ok" in gc.format_summary({"ddp": res["ddp"]})


def test_tokenize_part_on_cpu_and_exit_status(tmp_path):
    """The whole driver on CPU: tokenize on the debug codec passes; paper_bf16 with a missing config
    fails, which is reported in the summary and makes the exit status 1."""
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(PY), "--parts", "tokenize,paper_bf16", "--device", "cpu",
                        "--out", str(out), "--work", str(tmp_path / "work"),
                        "--tok_config", str(REPO / "egs/mini/conf/train_stage1_debug.yaml"),
                        "--tok_clips", "3", "--tok_seconds", "2", "--tok_batch", "3", "--tok_reps", "1",
                        "--paper_config", str(tmp_path / "missing.yaml")],
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    tok = summary["parts"]["tokenize"]
    assert tok["status"] == "ok", tok
    assert 0.0 <= tok["identical_codes"] <= 1.0 and len(tok["identical_codes_per_layer"]) == 4
    assert tok["frames"] == 3 * 25 and tok["fp32_audio_s_per_s"] > 0 and tok["bf16_audio_s_per_s"] > 0
    assert max(tok["codes_used_per_layer_fp32"]) > 1  # codebooks k-means-initialised, not all zero
    assert summary["parts"]["paper_bf16"]["status"] == "FAIL"
    assert "missing.yaml" in summary["parts"]["paper_bf16"]["error"]
    assert "xytok GPU check summary" in r.stdout and "FAILED: paper_bf16" in r.stdout


def test_tiny_random_qwen2_loads_offline_as_the_asr_lm(tmp_path):
    from xytok.asr import build_asr_branch

    info = gc.build_random_qwen2(tmp_path / "qwen", sizes=gc.QWEN_TINY)
    assert info["params"] > 0 and info["tokenizer_vocab"] <= gc.QWEN_TINY["vocab_size"]
    asr = build_asr_branch({"lowercase": True, "adapter": {"d_model": 32, "num_layers": 1, "num_heads": 4,
                                                           "ffn_dim": 64},
                            "lm": {"type": "hf", "name_or_path": info["dir"], "freeze": True,
                                   "dtype": "bfloat16"}}, in_dim=16)
    text = "the man said that you would come"
    ids = asr.tokenizer.encode(text.upper())  # lowercased first, as the paper config says
    assert ids and asr.tokenizer.decode(ids) == text
    assert asr.tokenizer.eos_id not in ids and asr.lm.vocab_size == gc.QWEN_TINY["vocab_size"]
    assert not any(p.requires_grad for p in asr.lm.parameters())
    loss, _ = asr(torch.randn(2, 16, 9), torch.tensor([9, 6]), ["THE OF AND", "HIS FOR"])
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None for p in asr.adapter.parameters())
