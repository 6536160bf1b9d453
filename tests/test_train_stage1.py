"""Stage-1 trainer: exact SIGKILL-resume, atomic checkpoints, 2-process gloo DDP, export, bad data.

Everything runs a tiny codec on synthetic audio (a few steps), in subprocesses like a recipe would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from golden import TINY_A
from recipe_helpers import sigkill_when_exists

REPO = Path(__file__).resolve().parents[1]
GOLDEN_TINY = TINY_A / "config.yaml"

WORDS = "the birch canoe slid on smooth planks glue sheet to dark blue background it is easy tell depth of a well".split()


def tiny_generator_params():
    """A few-thousand-parameter codec with the released schema (fast enough for unit tests)."""
    enc = dict(num_mel_bins=80, sampling_rate=16000, hop_length=160, stride_size=2, kernel_size=3, d_model=32,
               scale_embedding=False, max_audio_seconds=30, encoder_layers=1, encoder_attention_heads=2,
               encoder_ffn_dim=64, activation_function="gelu")
    dec = {k.replace("encoder", "decoder"): v for k, v in enc.items()}
    tr = dict(d_model=32, max_source_positions=1500, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64)
    return {
        "sample_rate": 16000,
        "feature_extractor_kwargs": dict(chunk_length=30, feature_size=80, hop_length=160, n_fft=400,
                                         n_samples=480000, nb_max_frames=3000, padding_side="right",
                                         padding_value=0.0, return_attention_mask=False, sampling_rate=16000),
        "semantic_encoder_kwargs": dict(enc),
        "semantic_encoder_adapter_kwargs": dict(tr, input_dim=32, output_dim=32),
        "acoustic_encoder_kwargs": dict(enc),
        "pre_rvq_adapter_kwargs": dict(tr, input_dim=64, output_dim=32),
        "downsample_kwargs": dict(d_model=32, avg_pooler=4),
        "quantizer_kwargs": dict(input_dim=128, rvq_dim=16, output_dim=128, num_quantizers=2, codebook_size=32,
                                 codebook_dim=16, quantizer_dropout=0.5, commitment=1),
        "post_rvq_adapter_kwargs": dict(tr, input_dim=128, output_dim=128, max_source_positions=375),
        "upsample_kwargs": dict(d_model=32, stride=4),
        "acoustic_decoder_kwargs": dec,
        "vocos_kwargs": dict(input_channels=80, dim=16, intermediate_dim=32, num_layers=1, n_fft=640, hop_size=160,
                             padding="same"),
    }


def make_data_dir(root: Path, name: str, n: int, seed: int, with_feats: bool = False) -> Path:
    """n utterances of 0.4-1.3 s of harmonic noise with random word transcripts."""
    rng = np.random.default_rng(seed)
    d = root / name
    (d / "wav").mkdir(parents=True, exist_ok=True)
    lines_wav, lines_text, lines_n = [], [], []
    for i in range(n):
        utt = f"spk{i % 2}-{name}-{i:03d}"
        length = int(rng.integers(6400, 21000))
        t = np.arange(length) / 16000
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.standard_normal(length)
        path = d / "wav" / f"{utt}.wav"
        sf.write(path, x.astype(np.float32), 16000, subtype="PCM_16")
        lines_wav.append(f"{utt} {path}")
        lines_text.append(f"{utt} " + " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5)))))
        lines_n.append(f"{utt} {length}")
    (d / "wav.scp").write_text("\n".join(lines_wav) + "\n")
    (d / "text").write_text("\n".join(lines_text) + "\n")
    (d / "utt2num_samples").write_text("\n".join(lines_n) + "\n")
    if with_feats:
        import kaldiio
        from xytok.frontend import utterance_log_mel

        with kaldiio.WriteHelper(f"ark,scp:{d}/feats.ark,{d}/feats.scp") as w:
            for line in lines_wav:
                utt, path = line.split()
                w(utt, utterance_log_mel(sf.read(path, dtype="float32")[0]))
    return d


def make_spm(root: Path) -> Path:
    import sentencepiece as spm

    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(WORDS[i:i + 5]) for i in range(len(WORDS))) + "\n")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(root / "bpe"), vocab_size=40,
                                   model_type="unigram", unk_id=1, bos_id=-1, eos_id=-1, pad_id=0,
                                   hard_vocab_limit=False, minloglevel=2)
    return root / "bpe.model"


def write_config(root: Path, spm_model: Path, **overrides) -> Path:
    conf = {
        "task": "stage1", "seed": 3, "max_steps": 6, "log_interval": 1, "valid_interval": 1000,
        "save_interval": 2, "keep_last": 2, "num_workers": 0, "grad_clip": 1.0,
        "optim": {"type": "adamw", "lr": 2e-3}, "scheduler": {"type": "cosine", "warmup_steps": 2},
        "data": {"max_frames": 400, "max_batch_size": 3, "crop_seconds": None},
        "valid_cer": True, "num_examples": 2, "tensorboard": False,
        "mel_resolutions": [[256, 64, 32], [512, 128, 64]],
        "loss_weights": {"asr": 1.0, "mel": 1.0, "feat": 0.5, "commit": 1.0},
        "asr": {"tokenizer": {"model": str(spm_model)}, "max_text_tokens": 16,
                "adapter": {"d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64},
                "lm": {"type": "decoder", "d_model": 32, "num_layers": 1, "num_heads": 2, "ffn_dim": 64,
                       "dropout": 0.1}},
        "generator_params": tiny_generator_params(),
    }
    for k, v in overrides.items():
        conf[k] = v
    path = root / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return {"root": root, "train": make_data_dir(root, "train", 9, 0, with_feats=True),
            "valid": make_data_dir(root, "valid", 3, 1), "spm": make_spm(root)}


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def train_cmd(config, out, train, valid=None, extra=()):
    cmd = [sys.executable, "-m", "xytok.bin.train", "--config", str(config), "--output_dir", str(out),
           "--train_data", str(train)]
    if valid:
        cmd += ["--valid_data", str(valid)]
    return cmd + list(extra)


def train_losses(exp: Path):
    rows = [json.loads(l) for l in (exp / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if "loss" in k or k.startswith("rvq/")}
            for r in rows if r["split"] == "train"}


def test_sigkill_resume_matches_uninterrupted_run(setup, tmp_path):
    config = write_config(tmp_path, setup["spm"], max_steps=5)
    ref = tmp_path / "ref"
    subprocess.run(train_cmd(config, ref, setup["train"]), env=env(), check=True, capture_output=True, timeout=300)
    expected = train_losses(ref)
    assert sorted(expected) == list(range(1, 6))

    run = tmp_path / "killed"
    # Kill as soon as the step-2 checkpoint exists (the run would go on to step 7).
    sigkill_when_exists(train_cmd(config, run, setup["train"]), run / "checkpoints" / "step2.pth", 240, env=env())
    state = torch.load(run / "checkpoint.pth", weights_only=False)
    assert 2 <= state["step"] < 5, "the kill must land mid-run"
    subprocess.run(train_cmd(config, run, setup["train"]), env=env(), check=True, capture_output=True, timeout=300)
    got = train_losses(run)
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert got[step] == expected[step], f"step {step}: resumed {got[step]} != uninterrupted {expected[step]}"
    assert "resuming from" in (run / "train.log").read_text()


def test_export_valid_and_init_param(setup, tmp_path):
    config = write_config(tmp_path, setup["spm"], max_steps=2, valid_interval=2)
    exp = tmp_path / "exp"
    res = subprocess.run(train_cmd(config, exp, setup["train"], setup["valid"]), env=env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    from xytok.codec import load_codec

    codec = load_codec(exp / "export" / "config.yaml", exp / "export" / "model.ckpt")
    assert codec.quantizer.num_quantizers == 2
    rows = [json.loads(l) for l in (exp / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r["split"] == "valid"]
    assert valid and {"cer", "asr_loss", "mel_loss"} <= set(valid[-1])
    assert (exp / "asr_examples.txt").read_text().count("HYP:") >= 2
    assert list((exp / "images").glob("mel_step*.png"))
    resolved = yaml.safe_load((exp / "config.yaml").read_text())
    assert resolved["data"]["train"] == str(setup["train"])
    # --init_param from the released-format export starts a NEW run (step 0) with those weights.
    exp2 = tmp_path / "exp2"
    res = subprocess.run(train_cmd(config, exp2, setup["train"], extra=["--init_param", str(exp / "export" / "model.ckpt"),
                                                                        "--max_steps", "1"]),
                         env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (exp2 / "train.log").read_text()
    assert "codec weights loaded (released format)" in log and "resuming" not in log
    assert sorted(train_losses(exp2)) == [1]


def test_two_process_gloo_ddp(setup, tmp_path):
    config = write_config(tmp_path, setup["spm"], max_steps=4, save_interval=4)
    exp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "xytok.bin.train", "--config", str(config), "--output_dir", str(exp),
           "--train_data", str(setup["train"]), "--valid_data", str(setup["valid"]), "--valid_interval", "4"]
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    state = torch.load(exp / "checkpoint.pth", weights_only=False)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 4
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"]), "ranks must use different seeds"
    assert sorted(train_losses(exp)) == [1, 2, 3, 4]
    assert (exp / "export" / "model.ckpt").exists()
    # resuming with another world size is refused with a clear message
    res = subprocess.run(train_cmd(config, exp, setup["train"], extra=["--max_steps", "5"]), env=env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "world_size=2" in res.stderr


def test_atomic_checkpoint_failure_keeps_previous(tmp_path, monkeypatch):
    from xytok.train import checkpointing as ck

    ck.save_training_checkpoint({"step": 1, "w": torch.ones(3)}, tmp_path)
    ck.save_training_checkpoint({"step": 2, "w": torch.ones(3) * 2}, tmp_path)

    def exploding_save(obj, f):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_training_checkpoint({"step": 3}, tmp_path)
    monkeypatch.undo()
    assert ck.load_checkpoint(tmp_path / ck.CHECKPOINT)["step"] == 2
    assert ck.load_checkpoint(tmp_path / ck.PREVIOUS)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [ck.PREVIOUS, ck.CHECKPOINT]
    # a corrupt latest (e.g. a filesystem that lost it) falls back to the previous one
    (tmp_path / ck.CHECKPOINT).write_bytes(b"not a checkpoint")
    assert ck.load_resume_state(tmp_path)["step"] == 1


def test_snapshots_keep_last(tmp_path):
    from xytok.train import checkpointing as ck

    for step in (2, 4, 6, 8):
        ck.save_snapshot({"m": {"w": torch.tensor([float(step)])}}, step, tmp_path, keep_last=2)
    assert [ck.snapshot_step(p) for p in ck.list_snapshots(tmp_path)] == [6, 8]


def test_missing_transcript_names_utterance(setup, tmp_path):
    from xytok.data.dataset import DataError, SpeechTextDataset

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("wav.scp", "utt2num_samples"):
        (bad / f).write_text((setup["valid"] / f).read_text())
    text = (setup["valid"] / "text").read_text().splitlines()
    (bad / "text").write_text("\n".join(text[1:]) + "\n")
    missing = text[0].split()[0]
    with pytest.raises(DataError, match=f"missing transcript for utterance '{missing}'"):
        SpeechTextDataset(str(bad), crop_seconds=None)


def test_empty_audio_names_utterance(setup, tmp_path):
    from xytok.data.dataset import DataError, SpeechTextDataset

    bad = tmp_path / "empty"
    bad.mkdir()
    sf.write(bad / "e.wav", np.zeros(0, dtype=np.float32), 16000)
    (bad / "wav.scp").write_text(f"spk0-empty {bad / 'e.wav'}\n")
    (bad / "text").write_text("spk0-empty hello world\n")
    (bad / "utt2num_samples").write_text("spk0-empty 0\n")
    with pytest.raises(DataError, match="'spk0-empty' has empty audio"):
        SpeechTextDataset(str(bad), crop_seconds=None)
    # without utt2num_samples the length is not guessed by opening the audio: a clear error instead
    (bad / "utt2num_samples").unlink()
    with pytest.raises(DataError, match="no utt2num_samples or utt2dur"):
        SpeechTextDataset(str(bad), crop_seconds=None)


def test_overrides_and_print_config(tmp_path):
    from xytok.train.trainer import load_config, parse_overrides

    ov = parse_overrides(["--optim.lr", "1e-5", "--data.crop_seconds=2.56", "--max_steps", "7"])
    conf = load_config(None, ov)
    assert conf["optim"]["lr"] == 1e-5 and conf["data"]["crop_seconds"] == 2.56 and conf["max_steps"] == 7
    assert conf["optim"]["type"] == "adamw"  # defaults kept
    res = subprocess.run([sys.executable, "-m", "xytok.bin.train", "--print_config", "--max_steps", "9"],
                         env=env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and yaml.safe_load(res.stdout)["max_steps"] == 9


def test_semantic_ctc_pretrain_then_stage1_starts_from_it(tmp_path):
    """xytok.bin.train_semantic_ctc (the debug stand-in for Whisper) -> stage-1 `semantic_init`."""
    from xytok.bin.train_semantic_ctc import main as ctc_main
    from xytok.train.stage1 import Stage1Task
    from xytok.train.trainer import load_config

    train = make_data_dir(tmp_path, "train", 8, 0, with_feats=True)
    dev = make_data_dir(tmp_path, "dev", 3, 1, with_feats=True)
    cfg = write_config(tmp_path, make_spm(tmp_path), frozen=["codec.semantic_encoder"],
                       semantic_ctc_pretrain={"epochs": 2, "batch_size": 4})
    out = tmp_path / "ctc"
    args = ["--config", str(cfg), "--train_data", str(train), "--valid_data", str(dev), "--out", str(out)]
    assert ctc_main(args + ["--lr", "1e-3"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert (res["epochs"], res["batch_size"], res["lr"]) == (2, 4, 1e-3)  # config block, then the CLI
    assert res["cer"] >= 0 and res["cer_kaldi"].startswith("%CER ") and (out / ".done").is_file()
    state = torch.load(out / "semantic_encoder.pth", map_location="cpu", weights_only=True)
    mtime = (out / "semantic_encoder.pth").stat().st_mtime_ns
    assert ctc_main(args) == 0 and (out / "semantic_encoder.pth").stat().st_mtime_ns == mtime  # done: kept

    conf = load_config(str(cfg), {"semantic_init": str(out / "semantic_encoder.pth")},
                       task_defaults=Stage1Task.default_config)
    model = Stage1Task(conf, tmp_path / "exp").build_models()["stage1"]
    got = model.codec.semantic_encoder.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)
    assert not any(p.requires_grad for p in model.codec.semantic_encoder.parameters())  # frozen, as Whisper

    (out / ".done").unlink()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"generator_params": tiny_generator_params(), "semantic_ctc_pretrain": {"epoch": 2}}))
    with pytest.raises(ValueError, match="unknown keys \\['epoch'\\]"):
        ctc_main(["--config", str(bad)] + args[2:])
    conf["semantic_init"] = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth not found"):
        Stage1Task(conf, tmp_path / "exp").build_models()


def test_init_param_tells_whether_whisper_towers_equal_the_checkpoint(tmp_path, caplog):
    """--init_param (released format) after whisper_init: the checkpoint's codec replaces every tower,
    and the log says per tower whether Whisper's weights equal the checkpoint's."""
    import logging

    from xytok.train.stage1 import Stage1Task
    from xytok.train.trainer import load_config

    conf = load_config(str(REPO / "egs/commonvoice/conf/train_stage1_debug.yaml"), {"semantic_ctc_pretrain": None},
                       task_defaults=Stage1Task.default_config)
    task = Stage1Task(conf, tmp_path / "exp")
    models = task.build_models()
    codec = models["stage1"].codec
    # as if whisper_init had loaded the towers' current weights
    task.config.update(whisper_init="tiny-whisper", whisper_init_towers=["semantic_encoder", "acoustic_encoder"])
    source = {k: v.clone() for k, v in codec.state_dict().items()}
    key = next(k for k, v in source.items() if k.startswith("acoustic_encoder.") and v.is_floating_point())
    source[key] += 1
    with caplog.at_level(logging.INFO, logger="xytok.train"):
        task.init_from(models, {"generator": source})
    assert "semantic_encoder equals whisper_init tiny-whisper" in caplog.text
    assert "acoustic_encoder differs from whisper_init tiny-whisper" in caplog.text
    assert all(torch.equal(v, source[k]) for k, v in codec.state_dict().items())
