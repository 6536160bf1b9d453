"""Streaming decoder (xytok.streaming, the causal options of xytok.nn): real dependency masks,
decode_stream == decode (<= 1e-4) for several feed patterns and lengths (also past 30 s), state reset,
the non-causal error, latency bookkeeping, `xytok decode --streaming`, and stage-2 streaming training
through the recipe (stage 6 with conf/train_stage2_streaming_debug.yaml) on an egs/mini layout and on
a LibriSpeech-layout tree. The "stage-1 export" is the tiny_a golden model (released architecture,
trained codebooks), so no stage-1 training runs here."""
import copy
import json
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

from xytok.codec import load_codec  # noqa: E402
from xytok.streaming import (NotStreamableError, StreamingDecoder, decode_stream, latency,  # noqa: E402
                             spec_from_params, streaming_spec)
from xytok.train.config import deep_merge  # noqa: E402

CONFIG, CKPT = TINY_A / "config.yaml", TINY_A / "model.ckpt"
WORDS = "THE BIRCH CANOE SLID ON SMOOTH PLANKS GLUE SHEET TO DARK BLUE BACKGROUND".split()
TOL = 1e-4


def _overrides(chunk, lookahead):
    return {"post_rvq_adapter_kwargs": {"causal": True, "chunk_frames": chunk, "lookahead_frames": lookahead},
            "acoustic_decoder_kwargs": {"causal": True, "chunk_frames": 4 * chunk},
            "vocos_kwargs": {"causal": True}}


def _causal(chunk, lookahead):
    """tiny_a with a chunk-causal decoder side; its (same-shape) non-causal weights load."""
    params = deep_merge(yaml.safe_load(CONFIG.read_text())["generator_params"], _overrides(chunk, lookahead))
    return load_codec({"generator_params": params}, str(CKPT))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def c2k1():
    return _causal(2, 1)


@pytest.fixture(scope="module")
def c1k2():
    return _causal(1, 2)


def _codes(codec, frames, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, codec.codebook_size, (codec.num_quantizers, frames), generator=g)


def _random_pieces(codes, seed, max_piece=5):
    g = torch.Generator().manual_seed(seed)
    pieces, i = [], 0
    while i < codes.shape[1]:
        n = int(torch.randint(0, max_piece + 1, (1,), generator=g))  # 0 = an empty push
        pieces.append(codes[:, i:i + n])
        i += n
    return pieces


def test_default_off_is_the_released_model():
    plain = load_codec(str(CONFIG), str(CKPT))
    params = yaml.safe_load(CONFIG.read_text())["generator_params"]
    explicit = load_codec({"generator_params": deep_merge(params, {
        "post_rvq_adapter_kwargs": {"causal": False}, "acoustic_decoder_kwargs": {"causal": False},
        "vocos_kwargs": {"causal": False}})}, str(CKPT))
    codes = _codes(plain, 30, 0)
    assert torch.equal(plain.decode([codes])[0], explicit.decode([codes])[0])
    with pytest.raises(ValueError, match="chunk_frames must be an integer >= 1"):
        _causal(0, 1)


def test_dependency_ends_at_chunk_end_plus_lookahead(c2k1):
    """C=2, K=1, two adapter layers: chunk c's audio depends on codes <= end(c) + K and on no later
    code (look-ahead in every layer would reach end(c) + 2K through the second layer)."""
    codec, spec = c2k1, streaming_spec(c2k1)
    sph, tail = spec.samples_per_code, spec.istft_tail
    codes = _codes(codec, 14, 1)
    base = codec.decode([codes])[0]
    for c in range(5):
        end = (c + 1) * 2 - 1                     # last frame of chunk c
        settled = slice(0, (end + 1) * sph - tail)  # audio final once chunk c is decoded
        later = codes.clone()
        later[:, end + 2:] = (later[:, end + 2:] + 7) % codec.codebook_size   # frames > end + K
        assert (codec.decode([later])[0][settled] - base[settled]).abs().max() <= 1e-6, c
        ahead = codes.clone()
        ahead[:, end + 1] = (ahead[:, end + 1] + 7) % codec.codebook_size     # frame end + K
        chunk_audio = slice(c * 2 * sph, (end + 1) * sph - tail)
        assert (codec.decode([ahead])[0][chunk_audio] - base[chunk_audio]).abs().max() > 1e-5, c  # >> float noise
    # the acoustic decoder alone (50 Hz, chunk 8) is strictly chunk-causal
    x = torch.randn(1, 64, 24)
    y = codec.acoustic_decoder(x, torch.tensor([24]))[0]
    x2 = x.clone()
    x2[:, :, 16:] += 1.0
    y2 = codec.acoustic_decoder(x2, torch.tensor([24]))[0]
    assert torch.allclose(y[:, :, :32], y2[:, :, :32], atol=1e-6) and not torch.allclose(y[:, :, 32:], y2[:, :, 32:])


@pytest.mark.parametrize("model", ["c2k1", "c1k2"])
@pytest.mark.parametrize("frames", [1, 7, 26])
def test_stream_equals_decode(model, frames, request):
    codec = request.getfixturevalue(model)
    codes = _codes(codec, frames, frames)
    ref = codec.decode([codes])[0]
    patterns = {"frame by frame": dict(frames_per_push=1), "chunk": {}, "all at once": dict(frames_per_push=frames)}
    for name, kwargs in patterns.items():
        out = torch.cat(list(codec.decode_stream(codes, **kwargs)))
        assert out.shape == ref.shape, name
        assert (out - ref).abs().max() <= TOL, name
    out = torch.cat(list(codec.decode_stream(_random_pieces(codes, frames))))
    assert out.shape == ref.shape and (out - ref).abs().max() <= TOL
    # fewer RVQ layers: the same prefix sum as decode(num_quantizers=2)
    ref2 = codec.decode([codes], num_quantizers=2)[0]
    out2 = torch.cat(list(codec.decode_stream(codes, frames_per_push=3, num_quantizers=2)))
    assert (out2 - ref2).abs().max() <= TOL and (ref2 - ref).abs().max() > 1e-3


@pytest.mark.parametrize("overlap", [10, 0])
def test_stream_past_30_seconds_matches_windowed_decode(c1k2, overlap):
    """32 s: decode windows 30 s (keep 20 s with overlap 10; 30 s with 0, where the first window ends
    exactly at its 375th code) and the stream restarts its state at the same code frames."""
    codes = _codes(c1k2, 400, 5)
    ref = c1k2.decode([codes], overlap_seconds=overlap)[0]
    out = torch.cat(list(c1k2.decode_stream(_random_pieces(codes, 9, max_piece=40), overlap_seconds=overlap)))
    assert out.shape == ref.shape and (out - ref).abs().max() <= TOL
    # the windows are real: a stream without restarts could not exceed the 375-row positional table
    assert c1k2.post_rvq_adapter.max_positions == 375


def test_state_reset_between_utterances(c2k1):
    a, b = _codes(c2k1, 11, 2), _codes(c2k1, 9, 3)
    ref_a, ref_b = c2k1.decode([a])[0], c2k1.decode([b])[0]
    stream = StreamingDecoder(c2k1)
    stream.push(a[:, :5])          # abandoned mid-utterance
    stream.reset()
    out_b = torch.cat([stream.push(b), stream.finish()])
    assert (out_b - ref_b).abs().max() <= TOL
    # finish() resets too: a, then b again, on the same object
    out_a = torch.cat([stream.push(a[:, :4]), stream.push(a[:, 4:]), stream.finish()])
    out_b2 = torch.cat([stream.push(b), stream.finish()])
    assert (out_a - ref_a).abs().max() <= TOL and torch.equal(out_b2, out_b)


def test_non_causal_model_and_bad_input_errors(c2k1):
    plain = load_codec(str(CONFIG), str(CKPT))
    with pytest.raises(NotStreamableError, match="was not trained causal.*post_rvq_adapter_kwargs.causal"):
        plain.decode_stream(_codes(plain, 5, 0))   # at the call, not at the first next()
    stream = StreamingDecoder(c2k1)
    stream.push(_codes(c2k1, 3, 0))
    bad = _codes(c2k1, 2, 0)
    bad[0, 1] = c2k1.codebook_size
    with pytest.raises(ValueError, match=r"code piece 1 \(from frame 3\): code values must be in \[0, 64\)"):
        stream.push(bad)
    with pytest.raises(ValueError, match="quantizer rows"):
        stream.push(_codes(c2k1, 2, 0)[:2])
    with pytest.raises(ValueError, match="no code frames"):
        list(decode_stream(c2k1, []))


def test_latency_formula_and_the_stream_agree(c2k1, c1k2):
    for codec, (c, k) in ((c2k1, (2, 1)), (c1k2, (1, 2))):
        spec = streaming_spec(codec)
        lat = latency(spec)
        assert lat["algorithmic_latency_ms"] == pytest.approx((c + k) * 80 + 15)
        assert lat["code_frame_ms"] == 80 and lat["istft_tail_ms"] == 15
        # the stream emits exactly what the readiness rule says, code by code
        stream, codes, out = StreamingDecoder(codec), _codes(codec, 12, 4), 0
        for n in range(1, 13):
            out += stream.push(codes[:, n - 1:n]).numel()
            assert out == spec.samples_ready(n), (c, k, n)
        assert out + stream.finish().numel() == 12 * spec.samples_per_code
        assert spec_from_params(codec.generator_params) == spec  # RESULTS.md reads the config only
    with pytest.raises(NotStreamableError, match="acoustic_decoder_kwargs.causal is not true"):
        spec_from_params({"post_rvq_adapter_kwargs": {"causal": True}, "vocos_kwargs": {"causal": True}})


def test_cli_decode_streaming(c1k2, tmp_path, caplog):
    from xytok.bin.decode import main

    model = tmp_path / "model"
    c1k2.save_pretrained(model, ckpt=False)
    codes_dir = tmp_path / "codes"
    codes_dir.mkdir()
    codes = {f"utt{i}": _codes(c1k2, n, i).numpy() for i, n in enumerate((5, 13))}
    for utt, c in codes.items():
        np.save(codes_dir / f"{utt}.npy", c)
    out = tmp_path / "out"
    caplog.set_level("INFO")
    assert main([str(codes_dir), str(out), "--model_dir", str(model), "--streaming", "--subtype", "FLOAT",
                 "--no_progress"]) == 0
    for utt, c in codes.items():
        wav, sr = sf.read(out / f"{utt}.wav", dtype="float32")
        ref = c1k2.decode([torch.from_numpy(c)])[0].numpy()
        assert sr == 16000 and wav.shape == ref.shape and np.abs(wav - ref).max() <= TOL
    assert sorted(read_kv(out / "wav.scp")) == sorted(codes)
    stats = json.loads((out / "streaming.json").read_text())
    assert stats["algorithmic_latency_ms"] == 255 and stats["utterances"] == 2 and stats["rtf"] > 0
    assert 0 < stats["first_audio_compute_ms_mean"] <= stats["first_audio_compute_ms_max"]
    assert "algorithmic latency 255 ms" in caplog.text and "time to first audio" in caplog.text
    # RESULTS.md: a Streaming section for this model (config + the streaming.json just written), none
    # for a non-causal one
    from xytok.bin.make_results import streaming_section

    (tmp_path / "exp" / "test").mkdir(parents=True)
    shutil.copytree(out, tmp_path / "exp" / "test" / "wav")
    section = streaming_section([{"name": "s2", "config": str(model / "config.yaml"), "test_set": "test",
                                  "exp_dir": str(tmp_path / "exp")}])
    assert "- s2: chunk 1 code frame(s), look-ahead 2 (80 ms each): algorithmic latency 255 ms" in section
    assert f"RTF {stats['rtf']:.3f}" in section
    assert streaming_section([{"name": "p", "config": str(CONFIG), "test_set": "test", "exp_dir": None}]) == ""
    # a non-causal model: a clear error, nothing decoded
    plain = tmp_path / "plain"
    load_codec(str(CONFIG), str(CKPT)).save_pretrained(plain, ckpt=False)
    caplog.clear()
    assert main([str(codes_dir), str(tmp_path / "out2"), "--model_dir", str(plain), "--streaming",
                 "--no_progress"]) != 0
    assert "was not trained causal" in caplog.text
    caplog.clear()
    assert main([str(codes_dir), str(tmp_path / "out3"), "--model_dir", str(model), "--stream_frames", "2",
                 "--no_progress"]) != 0
    assert "--stream_frames only applies with --streaming" in caplog.text


# ---------------------------------------------------------------------------------------- recipes
STAGE2_ARGS = ("--stage2_args \"--max_steps 3 --disc_start_step 2 --valid_interval 3 --save_interval 3 "
               "--log_examples 0 --data.max_frames 600 --valid_at_start false\"")


def _stage1_export(rdir: Path):
    export = rdir / "exp" / "stage1_train_stage1_debug" / "export"
    export.mkdir(parents=True)
    shutil.copy(CONFIG, export / "config.yaml")
    shutil.copy(CKPT, export / "model.ckpt")
    (export.parent / ".done").touch()


def _mini_layout(rdir: Path):
    """data/{train,dev,test} of egs/mini's layout (instead of its stage 1 corpus synthesis)."""
    rng = np.random.default_rng(0)
    for dset, n in (("train", 4), ("dev", 2), ("test", 2)):
        d = rdir / "data" / dset
        d.mkdir(parents=True)
        wavs, spk = [], []
        for i in range(n):
            utt = f"s{i % 2}-{dset}-{i:03d}"
            samples = 12000 + 2900 * i
            t = np.arange(samples) / 16000
            wav = 0.2 * np.sin(2 * np.pi * (130 + 30 * i) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
            wav += 0.01 * rng.standard_normal(samples)
            path = rdir / "db" / f"{utt}.wav"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, wav.astype(np.float32), 16000, subtype="PCM_16")
            wavs.append(f"{utt} {path}")
            spk.append((utt, f"s{i % 2}"))
        (d / "wav.scp").write_text("\n".join(sorted(wavs)) + "\n")
        (d / "text").write_text("".join(f"{u} {' '.join(rng.choice(WORDS, 5))}\n" for u, _ in sorted(spk)))
        (d / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in sorted(spk)))
        (d / "spk2utt").write_text("".join(f"{s} {' '.join(sorted(u for u, t in spk if t == s))}\n"
                                           for s in sorted({s for _, s in spk})))


def _check_streaming_export(export: Path, reference, wavs):
    codec = load_codec(str(export))
    assert codec.post_rvq_adapter.causal and codec.acoustic_decoder.causal and codec.vocos.causal
    assert streaming_spec(codec).chunk_frames == 1 and streaming_spec(codec).lookahead_frames == 2
    for wav in wavs:
        codes = codec.encode([wav])[0]
        assert torch.equal(codes, reference.encode([wav])[0])   # token side untouched
        ref = codec.decode([codes])[0]
        assert (torch.cat(list(codec.decode_stream(codes, frames_per_push=1))) - ref).abs().max() <= TOL
    return codec


def test_mini_recipe_stage6_streaming_debug(tmp_path):
    rdir = make_recipe(tmp_path, "mini")
    _mini_layout(rdir)
    common = "--nj 1 --inference_nj 1 --compute_feats false --nbpe 20 --bpemode char"
    r = run(f"./run.sh --stage 2 --stop_stage 4 {common}", rdir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _stage1_export(rdir)
    r = run(f"./run.sh --stage 6 --stop_stage 6 {common} --stage2_config conf/train_stage2_streaming_debug.yaml "
            f"--stage2_tag streaming_debug {STAGE2_ARGS}", rdir)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    exp = rdir / "exp" / "stage2_streaming_debug"
    log = (exp / "train.log").read_text()
    assert "streaming decoder: chunk 1 code frame(s), look-ahead 2: algorithmic latency 255 ms" in log
    assert "generator_overrides applied" in log and "post_rvq_adapter" not in log.split("frozen:")[-1].split("\n")[0]
    reference = load_codec(str(CONFIG), str(CKPT))
    wavs = [torch.from_numpy(sf.read(p, dtype="float32")[0]) for p in read_kv(rdir / "dump/raw/test/wav.scp").values()]
    _check_streaming_export(exp / "export", reference, wavs)
    # stages 7-9 with stage 8 streaming (two jobs): RESULTS.md reports the measured stream
    r = run(f"./run.sh --stage 7 --stop_stage 9 {common} --inference_nj 2 --stage2_tag streaming_debug "
            "--decode_streaming true --scoring_metrics stoi", rdir)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    report = json.loads((exp / "decode/test/wav/streaming.json").read_text())
    assert report["jobs"] == 2 and report["utterances"] == len(wavs) and report["rtf"] > 0
    results = (rdir / "RESULTS.md").read_text()
    assert "### Streaming decoders" in results and "measured by `xytok decode --streaming`" in results


def test_librispeech_layout_stage6_streaming_debug(tmp_path):
    from test_recipe_librispeech import _make_tree

    _make_tree(tmp_path / "corpus")
    rdir = make_recipe(tmp_path, "librispeech")
    sets = ("--train_set train_clean_100 --valid_set dev_clean --test_sets test_clean --nj 1 --compute_feats false "
            "--nbpe 20 --bpemode char --stage1_config conf/train_stage1_debug.yaml")  # -> exp/stage1_train_stage1_debug
    env = {"LIBRISPEECH": str(tmp_path / "corpus")}
    r = run(f"./run.sh --stage 1 --stop_stage 4 {sets} "
            "--local_data_opts \"--download false --parts 'train-clean-100 dev-clean test-clean'\"", rdir, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _stage1_export(rdir)
    r = run(f"./run.sh --stage 6 --stop_stage 6 {sets} --stage2_config conf/train_stage2_streaming_debug.yaml "
            f"--stage2_tag streaming_debug {STAGE2_ARGS}", rdir, env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    wavs = [torch.from_numpy(sf.read(p, dtype="float32")[0])
            for p in list(read_kv(rdir / "dump/raw/test_clean/wav.scp").values())[:2]]
    _check_streaming_export(rdir / "exp/stage2_streaming_debug/export", load_codec(str(CONFIG), str(CKPT)), wavs)


def test_merge_streaming_reports(tmp_path, capsys):
    from xytok.bin.merge_streaming_reports import main

    fixed = {"chunk_frames": 1, "lookahead_frames": 2, "algorithmic_latency_ms": 255.0}
    jobs = [{**fixed, "utterances": 1, "audio_seconds": 2.0, "compute_seconds": 1.0, "rtf": 0.5,
             "first_audio_compute_ms_mean": 10.0, "first_audio_compute_ms_max": 10.0},
            {**fixed, "utterances": 3, "audio_seconds": 6.0, "compute_seconds": 1.0, "rtf": 1 / 6,
             "first_audio_compute_ms_mean": 20.0, "first_audio_compute_ms_max": 30.0}]
    paths = []
    for i, job in enumerate(jobs):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(job))
    out = tmp_path / "merged.json"
    assert main(["--out", str(out)] + [str(p) for p in paths]) == 0
    merged = json.loads(out.read_text())
    assert merged["utterances"] == 4 and merged["jobs"] == 2 and merged["rtf"] == pytest.approx(0.25)
    assert merged["first_audio_compute_ms_mean"] == pytest.approx(17.5)
    assert merged["first_audio_compute_ms_max"] == 30.0 and merged["algorithmic_latency_ms"] == 255.0
    # a file that is not a streaming report: named, with what it lacks
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"utterances": 1}))
    assert main(["--out", str(out), str(paths[0]), str(bad)]) == 1
    assert f"{bad}: not a streaming.json" in capsys.readouterr().err
    # different models: refused
    paths[1].write_text(json.dumps({**jobs[1], "chunk_frames": 2}))
    assert main(["--out", str(out)] + [str(p) for p in paths]) == 1
    assert "not the same model/chunking" in capsys.readouterr().err
