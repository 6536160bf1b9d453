"""24/32 kHz decoders: rate fields, released TTSD-format configs, decode at the output rate, scoring at
16 kHz, stage-2 targets at the output rate, and recipe stages 6-9 with conf/train_stage2_24k_debug.yaml
(egs/mini layout; stage 6 also on a LibriSpeech-layout tree). The "stage-1 export" is the tiny_a
golden model (released architecture, trained codebooks), so no stage-1 training runs here."""
import copy
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from golden import TINY_A  # noqa: E402
from recipe_helpers import make_recipe, read_kv, run  # noqa: E402

from xytok.audio import resample  # noqa: E402
from xytok.codec import load_codec, resolve_rates  # noqa: E402

CONFIG = TINY_A / "config.yaml"
CKPT = TINY_A / "model.ckpt"
RATES = {24000: (960, 240, 1920), 32000: (1280, 320, 2560)}


def _params():
    return copy.deepcopy(yaml.safe_load(CONFIG.read_text())["generator_params"])


def _at_rate(rate, released_layout=True):
    """tiny_a's generator_params with the decoder at `rate`, as the MOSS-TTSD configs write it:
    the four rate fields inside generator_params, no sample_rate, acoustic decoder left at 16000/160."""
    n_fft, hop, up = RATES[rate]
    p = _params()
    p.pop("sample_rate")
    p["vocos_kwargs"].update(n_fft=n_fft, hop_size=hop)
    if released_layout:
        p.update(input_sample_rate=16000, output_sample_rate=rate, encoder_downsample_rate=1280,
                 decoder_upsample_rate=up)
    return p


def _speech(seconds, rate, seed=0, top_hz=None):
    """Harmonic speech-like signal + noise up to top_hz (default: near rate / 2); top_hz < 8 kHz is
    made at 16 kHz and upsampled (16 kHz audio at a higher rate)."""
    if top_hz and top_hz < 8000 and rate > 16000:
        return resample(_speech(seconds, 16000, seed, top_hz), 16000, rate)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    top = top_hz or rate / 2 - 500
    wav = sum(np.sin(k * phase) / k for k in range(1, int(top / 140)))
    return (0.1 * wav * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_codec(str(CONFIG), str(CKPT))


# ------------------------------------------------------------------------------------------ rates
def test_rate_fields_derived_and_checked(tmp_path):
    assert resolve_rates(_params()) == {"input_sample_rate": 16000, "output_sample_rate": 16000,
                                        "encoder_downsample_rate": 1280, "decoder_upsample_rate": 1280}
    for rate, (_, _, up) in RATES.items():
        p = _at_rate(rate, released_layout=False)  # absent fields are derived from the modules
        assert resolve_rates(p)["output_sample_rate"] == rate and resolve_rates(p)["decoder_upsample_rate"] == up
    bad = [({"decoder_upsample_rate": 1280}, "decoder_upsample_rate 1280 but the decoder makes 1920"),
           ({"output_sample_rate": 32000}, "output_sample_rate 32000 but .* = 24000 Hz"),
           ({"sample_rate": 16000}, "sample_rate 16000 .*legacy name of the output rate"),
           ({"input_sample_rate": 24000}, "16000 Hz only"),
           ({"encoder_downsample_rate": 1920}, "encoder_downsample_rate 1920"),
           ({"acoustic_decoder_kwargs": {**_params()["acoustic_decoder_kwargs"], "sampling_rate": 24000}},
            "100 Hz frame rate")]
    for change, message in bad:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"generator_params": {**_at_rate(24000), **change}}))
        with pytest.raises(ValueError, match=f"{path}: .*{message}"):
            load_codec(str(path))


@pytest.mark.parametrize("layout", ["generator_params", "top_level"])
def test_released_24k_config_loads_and_decodes_at_24k(tiny, tmp_path, layout):
    """A MOSS-TTSD-format 24 kHz config (rate fields in generator_params, or at the top level as the
    transformers port reads them) with weights saved under the release's module name enhanced_vocos."""
    p = _at_rate(24000)
    conf = {"generator_params": p}
    if layout == "top_level":
        conf = {k: p.pop(k) for k in ("input_sample_rate", "output_sample_rate", "encoder_downsample_rate",
                                      "decoder_upsample_rate")}
        conf["generator_params"] = p
    (tmp_path / "MOSS_TTSD_tokenizer.yaml").write_text(yaml.safe_dump(conf))
    codec24 = load_codec(str(tmp_path / "MOSS_TTSD_tokenizer.yaml"))
    own = codec24.state_dict()
    sd = {k: (v if own[k].shape == v.shape else own[k]) for k, v in tiny.state_dict().items()}
    torch.save({"generator": {k.replace("vocos.", "enhanced_vocos.", 1) if k.startswith("vocos.") else k: v
                              for k, v in sd.items()}}, tmp_path / "xy_tokenizer.ckpt")
    codec24 = load_codec(str(tmp_path / "MOSS_TTSD_tokenizer.yaml"), str(tmp_path / "xy_tokenizer.ckpt"))
    assert (codec24.sample_rate, codec24.input_sample_rate, codec24.output_sample_rate) == (24000, 16000, 24000)
    assert (codec24.frame_rate, codec24.code_hop, codec24.decoder_upsample_rate) == (12.5, 1280, 1920)
    assert codec24.bitrate() == tiny.bitrate()
    wav = torch.from_numpy(_speech(2.0, 16000))
    codes = codec24.encode([wav])[0]
    assert torch.equal(codes, tiny.encode([wav])[0])  # same encoder: same codes
    out = codec24.decode([codes])[0]
    assert out.numel() == codes.shape[1] * 1920
    # export round trip: config.yaml carries the rate fields, load_codec reads a 24 kHz model back
    codec24.save_pretrained(tmp_path / "export")
    written = yaml.safe_load((tmp_path / "export" / "config.yaml").read_text())
    assert written["sample_rate"] == 24000 and written["generator_params"]["output_sample_rate"] == 24000
    assert written["generator_params"]["decoder_upsample_rate"] == 1920
    again = load_codec(str(tmp_path / "export"))
    assert again.sample_rate == 24000 and torch.equal(again.decode([codes])[0], out)


def test_decode_chunks_at_the_output_rate(tiny):
    """Long code sequences: 30-s code windows (375 frames) with 250 kept, placed at 2560 samples per
    frame for 32 kHz; fast and padded modes agree, and the first window equals one detokenize call."""
    codec = load_codec({"generator_params": _at_rate(32000)})
    codec.load_state_dict({k: v for k, v in tiny.state_dict().items() if not k.startswith("vocos.head")},
                          strict=False)
    codec.eval()
    codes = torch.randint(0, codec.codebook_size, (codec.num_quantizers, 400), generator=torch.Generator().manual_seed(0))
    fast = codec.decode([codes])[0]
    assert fast.numel() == 400 * 2560
    padded = codec.decode([codes], mode="padded")[0]
    assert torch.allclose(fast, padded, atol=1e-5)
    with torch.no_grad():
        first = codec.detokenize(codes[:, None, :375], torch.tensor([375]))["wav"][0]
    assert torch.equal(fast[: 250 * 2560], first[: 250 * 2560])
    assert not torch.allclose(fast[250 * 2560: 251 * 2560], first[250 * 2560: 251 * 2560])  # 2nd window
    with pytest.raises(ValueError, match="overlap_seconds must be in"):
        codec.decode([codes], overlap_seconds=30)


# ------------------------------------------------------------------------------------ stage 2 parts
def _data_dir(d: Path, rate: int, n=4, tops=None):
    """A data dir of n utterances at `rate`; tops[i]: highest harmonic (Hz) of item i."""
    d.mkdir(parents=True)
    scp, lens = [], []
    for i in range(n):
        wav = _speech(1.0 + 0.3 * i, rate, seed=i, top_hz=tops[i] if tops else None)
        sf.write(d / f"u{i}.wav", wav, rate, subtype="PCM_16")
        scp.append(f"u{i} {d / f'u{i}.wav'}\n")
        lens.append(f"u{i} {wav.size}\n")
    (d / "wav.scp").write_text("".join(scp))
    (d / "utt2num_samples").write_text("".join(lens))
    (d / "fs").write_text(f"{rate}\n")
    return d


def test_dataset_targets_at_output_rate(tmp_path, caplog):
    from xytok.data.dataset import SpeechTextDataset, collate

    d = _data_dir(tmp_path / "d24", 24000)
    ds = SpeechTextDataset(str(d), crop_seconds=0.64, require_text=False, target_sample_rate=24000, seed=3)
    assert list(ds.lengths()) == [8 * 1280] * 4  # 0.64 s crops, budgeted in 16 kHz samples
    item = ds[(2, 0)]
    assert item["wav"].numel() == 8 * 1280 and item["target_wav"].numel() == 8 * 1920
    full, _ = sf.read(d / "u2.wav", dtype="float32")
    frames = full.size // 1920
    expected16 = resample(full[: frames * 1920], 24000, 16000)
    s = item["start"]
    assert s % 1280 == 0 and item["start"] > 0  # a random crop inside the utterance
    assert np.array_equal(item["wav"].numpy(), expected16[s: s + 8 * 1280])
    assert np.array_equal(item["target_wav"].numpy(), full[s * 3 // 2: s * 3 // 2 + 8 * 1920])
    batch = collate([ds[(i, 0)] for i in range(3)])
    assert batch["target_wav"].shape == (3, 8 * 1920) and batch["wav"].shape == (3, 8 * 1280)
    # with the 16 kHz dump named in `encoder_input`, the encoder reads it (what encode() sees)
    d16 = _data_dir(tmp_path / "d16", 16000)
    (d / "encoder_input").write_text(f"{d16}\n")
    ds = SpeechTextDataset(str(d), crop_seconds=0.64, require_text=False, target_sample_rate=24000, seed=3)
    item = ds[(2, 0)]
    own16, _ = sf.read(d16 / "u2.wav", dtype="float32")
    assert item["start"] == s and np.array_equal(item["wav"].numpy(), own16[s: s + 8 * 1280])
    assert np.array_equal(item["target_wav"].numpy(), full[s * 3 // 2: s * 3 // 2 + 8 * 1920])
    (d16 / "wav.scp").write_text((d16 / "wav.scp").read_text().replace("u2 ", "x2 "))
    with pytest.raises(Exception, match="utterance 'u2' is not in .*d16/wav.scp"):
        SpeechTextDataset(str(d), crop_seconds=0.64, require_text=False, target_sample_rate=24000)[(2, 0)]
    # 16 kHz content at 24 kHz is warned about; min_bandwidth_hz drops it and counts it
    _data_dir(tmp_path / "up", 24000, tops=[7000] * 4)
    with caplog.at_level(logging.WARNING, logger="xytok.data"):
        SpeechTextDataset(str(tmp_path / "up"), crop_seconds=None, require_text=False, target_sample_rate=24000)
    assert "16 kHz (or lower) audio at 24000 Hz?" in caplog.text
    mixed = _data_dir(tmp_path / "mixed", 24000, tops=[None, 7000, None, 7000])
    ds = SpeechTextDataset(str(mixed), crop_seconds=None, require_text=False, target_sample_rate=24000,
                           min_bandwidth_hz=10000)
    assert ds.num_dropped["narrowband"] == 2 and [ds.raw_item(i)["id"] for i in range(len(ds))] == ["u0", "u2"]


def test_stage2_vocos_head_extension_reproduces_16k_decoder(tiny, tmp_path):
    """--init_param from a 16 kHz model into a 24 kHz decoder: the extended ISTFT head makes the same
    audio as the 16 kHz decoder, at 24 kHz (bins up to 8 kHz copied, above silent)."""
    from xytok.train.stage2 import Stage2Task

    n_fft, hop, up = RATES[24000]
    conf = dict(Stage2Task.default_config, generator_config=str(CONFIG), output_dir=str(tmp_path),
                generator_overrides={"output_sample_rate": 24000, "decoder_upsample_rate": up,
                                     "vocos_kwargs": {"n_fft": n_fft, "hop_size": hop}})
    task = Stage2Task(conf, tmp_path)
    assert task.output_rate == 24000 and task.generator_params["sample_rate"] == 24000
    assert [m.n_fft for m in task.mel_loss.mels] == [768, 1536, 3072]
    models = task.build_models()
    task.init_from(models, torch.load(CKPT, weights_only=True))
    codec24 = models["generator"].codec.eval()
    codes = tiny.encode([torch.from_numpy(_speech(2.0, 16000))])[0]
    out16 = tiny.decode([codes])[0].numpy()
    out24 = codec24.decode([codes])[0].numpy()
    def below_7k(wav, rate):  # the band both decoders and the resampler pass untouched
        spec = np.fft.rfft(wav[rate // 10: -rate // 10])
        return spec[np.fft.rfftfreq(wav.size - rate // 5, 1 / rate) < 7000]

    ref, got = below_7k(out16, 16000) * 1.5, below_7k(out24, 24000)  # DFT of 1.5x the samples
    snr = 10 * np.log10(np.sum(np.abs(ref) ** 2) / np.sum(np.abs(ref - got) ** 2))
    assert snr > 30, snr
    assert out24.std() == pytest.approx(out16.std(), rel=0.1)
    task_fresh = Stage2Task({**conf, "vocos_head_init": "fresh"}, tmp_path)
    fresh = task_fresh.build_models()
    task_fresh.init_from(fresh, torch.load(CKPT, weights_only=True))
    got = below_7k(fresh["generator"].codec.eval().decode([codes])[0].numpy(), 24000)
    assert 10 * np.log10(np.sum(np.abs(ref) ** 2) / np.sum(np.abs(ref - got) ** 2)) < 5


def test_scoring_resamples_and_says_so(tmp_path):
    from xytok.eval.scoring import ScoreConfig, resampled_counts, run_scoring

    ref = _speech(1.5, 16000)
    sf.write(tmp_path / "ref.wav", ref, 16000)
    sf.write(tmp_path / "hyp.wav", resample(ref, 16000, 24000), 24000)
    results = run_scoring({"u": str(tmp_path / "ref.wav")}, {"u": str(tmp_path / "hyp.wav")},
                          ScoreConfig(metrics=("stoi",)))
    assert results[0].hyp_sample_rate == 24000 and results[0].values["stoi"] > 0.99
    assert resampled_counts(results) == {"reference": {}, "reconstruction": {24000: 1}}


# ------------------------------------------------------------------------------------- recipes
WORDS = "THE BIRCH CANOE SLID ON SMOOTH PLANKS GLUE SHEET TO DARK BLUE BACKGROUND".split()


def _corpus(rdir: Path, rate: int):
    """data/{train,dev,test} of a few utterances recorded at `rate` (content up to rate/2)."""
    rng = np.random.default_rng(0)
    for dset, n in (("train", 6), ("dev", 2), ("test", 2)):
        d = rdir / "data" / dset
        d.mkdir(parents=True)
        rows = {"wav.scp": [], "text": [], "utt2spk": []}
        for i in range(n):
            utt = f"s{i % 2}-{dset}-{i:03d}"
            path = rdir / "db" / f"{utt}.flac"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, _speech(1.2 + 0.2 * i, rate, seed=i + 10 * n), rate, subtype="PCM_16")
            rows["wav.scp"].append(f"{utt} {path}")
            rows["text"].append(f"{utt} {' '.join(rng.choice(WORDS, 6))}")
            rows["utt2spk"].append(f"{utt} s{i % 2}")
        for name, lines in rows.items():
            (d / name).write_text("\n".join(sorted(lines)) + "\n")
        spk = {}
        for line in rows["utt2spk"]:
            u, s = line.split()
            spk.setdefault(s, []).append(u)
        (d / "spk2utt").write_text("".join(f"{s} {' '.join(sorted(us))}\n" for s, us in sorted(spk.items())))


def _stage1_export(rdir: Path, tag: str):
    export = rdir / "exp" / f"stage1_{tag}" / "export"
    export.mkdir(parents=True)
    shutil.copy(CONFIG, export / "config.yaml")
    shutil.copy(CKPT, export / "model.ckpt")
    (export.parent / ".done").touch()


STAGE2_ARGS = ("--stage2_args \"--max_steps 4 --disc_start_step 2 --valid_interval 4 --save_interval 4 "
               "--log_examples 1 --data.max_frames 600\"")


def test_mini_recipe_24k_stages_6_to_9(tmp_path, tiny):
    rdir = make_recipe(tmp_path, "mini")
    _corpus(rdir, 24000)
    common = "--nj 1 --inference_nj 1 --compute_feats false --nbpe 20 --bpemode char"
    r = run(f"./run.sh --stage 2 --stop_stage 4 {common}", rdir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _stage1_export(rdir, "train_stage1_debug")
    cmd = (f"./run.sh --stage 6 --stop_stage 9 {common} --stage2_config conf/train_stage2_24k_debug.yaml "
           f"--stage2_tag 24k_debug {STAGE2_ARGS} --scoring_metrics pesq_wb,stoi")
    r = run(cmd, rdir)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "decoder output 24000 Hz" in out and (rdir / "dump/raw_24000/train/.done").is_file()
    assert (rdir / "dump/raw_24000/dev/fs").read_text().strip() == "24000"
    exp = rdir / "exp" / "stage2_24k_debug"
    log = (exp / "train.log").read_text()
    assert re.search(r"encoder input 16000 Hz \(the 16 kHz dump dump/raw/(dev|train), as encode\(\) sees it\), "
                     r"targets 24000 Hz", log)
    assert "vocos ISTFT head extended from 16000 Hz" in log
    valid = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()
             if "mel_distance" in line]
    print("24k debug valid mel distance:", [v.get("mel_distance", v) for v in valid])
    codec24 = load_codec(str(exp / "export"))
    assert codec24.sample_rate == 24000 and codec24.decoder_upsample_rate == 1920
    # codes identical to the stage-1 export's for the same (16 kHz dump) input
    test_scp = read_kv(rdir / "dump/raw/test/wav.scp")
    for utt, path in test_scp.items():
        wav = torch.from_numpy(sf.read(str(rdir / path), dtype="float32")[0])
        assert torch.equal(codec24.encode([wav])[0], tiny.encode([wav])[0])
    # stage 8 wrote 24 kHz wavs of T x 1920 samples; stage 9 scored at 16 kHz and said so
    dec = exp / "decode" / "test"
    import kaldiio

    codes = {u: kaldiio.load_mat(str(rdir / v)) for u, v in read_kv(dec / "codes.scp").items()}
    for utt, path in read_kv(dec / "wav" / "wav.scp").items():
        info = sf.info(str(rdir / path))
        assert info.samplerate == 24000 and info.frames == codes[utt].shape[-1] * 1920
    summary = json.loads((dec / "score" / "summary.json").read_text())
    assert summary["resampling"]["resampled_files_by_rate"]["reconstruction"] == {"24000": len(test_scp)}
    assert "resampled to 16000 Hz for the metrics" in (dec / "score" / "score.log").read_text()


def test_librispeech_layout_stage6_24k_warns_upsampled(tmp_path):
    from test_recipe_librispeech import _make_tree

    _make_tree(tmp_path / "corpus")
    rdir = make_recipe(tmp_path, "librispeech")
    sets = ("--train_set train_clean_100 --valid_set dev_clean --test_sets test_clean --nj 1 --compute_feats false "
            "--stage1_config conf/train_stage1_debug.yaml")
    r = run(f"./run.sh --stage 1 --stop_stage 4 {sets} --nbpe 20 --bpemode char "
            "--local_data_opts \"--download false --parts 'train-clean-100 dev-clean test-clean'\"",
            rdir, {"LIBRISPEECH": str(tmp_path / "corpus")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _stage1_export(rdir, "train_stage1_debug")
    r = run(f"./run.sh --stage 6 --stop_stage 6 {sets} --nbpe 20 --bpemode char "
            f"--stage2_config conf/train_stage2_24k_debug.yaml --stage2_tag 24k_debug {STAGE2_ARGS}", rdir,
            {"LIBRISPEECH": str(tmp_path / "corpus")})
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    log = (rdir / "exp/stage2_24k_debug/train.log").read_text()
    assert "16 kHz (or lower) audio at 24000 Hz?" in log  # LibriSpeech is 16 kHz: upsampled targets
    assert load_codec(str(rdir / "exp/stage2_24k_debug/export")).sample_rate == 24000
    # a re-run finds the 24 kHz dump (fingerprinted) and the trained model up to date
    r = run(f"./run.sh --stage 6 --stop_stage 6 {sets} --nbpe 20 --bpemode char "
            f"--stage2_config conf/train_stage2_24k_debug.yaml --stage2_tag 24k_debug {STAGE2_ARGS}", rdir,
            {"LIBRISPEECH": str(tmp_path / "corpus")})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert out.count("already dumped at 24000 Hz, up to date") == 2 and "dumping again" not in out


def test_config_output_rate_follows_the_decoder_overrides(tmp_path):
    """Recipe stage 6 picks the dump rate with config_output_rate: the decoder's rate after overrides."""
    from xytok.train.stage2 import config_output_rate

    def rate(conf):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(conf))
        return config_output_rate(str(path))

    assert rate({}) == 16000
    assert rate({"generator_overrides": {"vocos_kwargs": {"n_fft": 960, "hop_size": 240}}}) == 24000
    # a 16 kHz base's legacy sample_rate follows the overridden decoder, as in training
    assert rate({"generator_params": {"sample_rate": 16000, "vocos_kwargs": {"hop_size": 160}},
                 "generator_overrides": {"vocos_kwargs": {"hop_size": 320}}}) == 32000
    # every stride of the decoder counts, not only the Vocos hop
    assert rate({"generator_overrides": {"upsample_kwargs": {"stride": 6}}}) == 24000
