"""Issue 15 items 1-2: load_codec from a directory or a hub id, safetensors weights, pack + upload.

The hub is never reached: online resolution goes through a monkeypatched
``HfApi.list_repo_files`` + ``hf_hub_download`` that serve a tmp "remote" folder (recording what
was asked for), and offline resolution runs the *real* ``hf_hub_download(local_files_only=True)``
on a cache folder laid out by hand as huggingface_hub writes it
(``models--ORG--NAME/{refs/main, snapshots/<sha>/FILE}``).
"""
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from golden import GOLDEN, TINY_A
from recipe_helpers import make_recipe, run
from xytok import load_codec
from xytok.checkpoint import CheckpointMismatchError, read_generator_state, save_generator_safetensors
from xytok.codec import XYTokenizer
from xytok.pretrained import RELEASED_CONFIG, PretrainedNotFoundError, resolve_codec_files

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def ref():
    """The golden tiny model from its released-format files, and its codes / audio on two clips."""
    torch.set_num_threads(1)
    codec = load_codec(TINY_A / "config.yaml", TINY_A / "model.ckpt")
    wavs = [torch.from_numpy(sf.read(TINY_A / n, dtype="float32")[0]) for n in ("input_short.wav", "input_batch2.wav")]
    with torch.inference_mode():
        codes = codec.encode(wavs)
        audio = codec.decode(codes)
    return {"codec": codec, "wavs": wavs, "codes": codes, "audio": audio}


def _same_model(codec, ref):
    a, b = codec.state_dict(), ref["codec"].state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with torch.inference_mode():
        codes = codec.encode(ref["wavs"])
        audio = codec.decode(ref["codes"])
    for c, rc in zip(codes, ref["codes"]):
        assert torch.equal(c, rc)
    for x, rx in zip(audio, ref["audio"]):
        assert torch.equal(x, rx)


def _clean_env(monkeypatch):
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)


# ------------------------------------------------------------------------------ local directories
def test_safetensors_round_trip_gives_identical_codes_and_audio(ref, tmp_path):
    out = ref["codec"].save_pretrained(tmp_path / "m", ckpt=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors"]
    # weight-norm parameters keep the released (legacy) names in the file
    names = set(read_generator_state(out / "model.safetensors"))
    assert "quantizer.input_proj.weight_g" in names and "quantizer.input_proj.weight_v" in names
    _same_model(load_codec(out), ref)                 # directory
    _same_model(XYTokenizer.from_pretrained(str(out)), ref)
    # explicit config + safetensors, and a safetensors file under another name (sniffed by header)
    shutil.copy(out / "model.safetensors", tmp_path / "weights.bin")
    _same_model(load_codec(out / "config.yaml", tmp_path / "weights.bin"), ref)


def test_safetensors_with_parametrization_names_and_bad_files(ref, tmp_path):
    sd = ref["codec"].state_dict()
    renamed = {k.replace("weight_g", "parametrizations.weight.original0")
                .replace("weight_v", "parametrizations.weight.original1"): v for k, v in sd.items()}
    assert renamed.keys() != sd.keys()
    save_generator_safetensors(renamed, tmp_path / "p.safetensors")
    _same_model(load_codec(TINY_A / "config.yaml", tmp_path / "p.safetensors"), ref)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointMismatchError, match=r"bad.safetensors: cannot be read as a safetensors"):
        load_codec(TINY_A / "config.yaml", tmp_path / "bad.safetensors")
    missing = {k: v for k, v in sd.items() if not k.startswith("vocos.")}
    save_generator_safetensors(missing, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"(?s)m.safetensors: checkpoint does not match.*missing keys \(27\)"):
        load_codec(TINY_A / "config.yaml", tmp_path / "m.safetensors")


def test_directory_with_released_file_names(ref, tmp_path):
    d = tmp_path / "released"
    d.mkdir()
    shutil.copy(TINY_A / "config.yaml", d / "xy_tokenizer_config.yaml")
    shutil.copy(TINY_A / "model.ckpt", d / "xy_tokenizer.ckpt")
    files = resolve_codec_files(d)
    assert Path(files.config).name == "xy_tokenizer_config.yaml" and Path(files.weights).name == "xy_tokenizer.ckpt"
    _same_model(load_codec(d), ref)
    # the authors' repo layout: config/xy_tokenizer_config.yaml
    (d / "config").mkdir()
    (d / "xy_tokenizer_config.yaml").rename(d / "config" / "xy_tokenizer_config.yaml")
    _same_model(load_codec(d), ref)
    # weights only (what `huggingface-cli download fdugyt/XY_Tokenizer xy_tokenizer.ckpt` gives):
    # the shipped released config is used, so these tiny weights are refused, naming that config
    shutil.rmtree(d / "config")
    files = resolve_codec_files(d)
    assert files.bundled_config and files.config == str(RELEASED_CONFIG)
    with pytest.raises(CheckpointMismatchError, match=r"no config file came with .*xy_tokenizer.ckpt.*released 16 kHz config"):
        load_codec(d)


def test_shipped_released_config_is_the_released_one():
    ours = yaml.safe_load(RELEASED_CONFIG.read_text())
    released = yaml.safe_load((GOLDEN / "full" / "config.yaml").read_text())
    assert ours["generator_params"] == released["generator_params"]
    assert ours["sample_rate"] == 16000


def test_directory_errors_name_the_directory_and_its_files(ref, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(PretrainedNotFoundError, match=r"empty: no codec weights .*found: notes.txt"):
        load_codec(empty)
    no_cfg = tmp_path / "nocfg"
    ref["codec"].save_pretrained(no_cfg, ckpt=False)
    (no_cfg / "config.yaml").unlink()
    with pytest.raises(PretrainedNotFoundError, match=r"nocfg: no codec config .*config.yaml.*found: model.safetensors"):
        load_codec(no_cfg)
    with pytest.raises(FileNotFoundError, match=r"'./does/not/exist': no such directory"):
        load_codec("./does/not/exist")
    with pytest.raises(FileNotFoundError, match=r"codec config not found: .*missing.yaml"):
        load_codec(tmp_path / "missing.yaml")  # today's config-path call keeps its error
    # a training exp dir resolves to its export/
    exp = tmp_path / "exp" / "stage2_x"
    ref["codec"].save_pretrained(exp / "export")
    (exp / "config.yaml").write_text("task: stage2\n")
    assert Path(resolve_codec_files(exp).weights) == exp / "export" / "model.safetensors"


# ------------------------------------------------------------------------------------- the hub
def _hub_error(cls, msg):
    # the hub's HTTP errors want a real response object; the test only needs the type and message
    err = cls.__new__(cls)
    Exception.__init__(err, msg)
    return err


class FakeHub:
    """Serves ``root/<repo>/<file>`` through list_repo_files / hf_hub_download; records the calls."""

    def __init__(self, root: Path):
        self.root, self.listed, self.downloaded = root, [], []

    def install(self, monkeypatch):
        hub = self

        def list_repo_files(api, repo_id, *, revision=None, repo_type=None, token=None):
            hub.listed.append((repo_id, revision))
            d = hub.root / repo_id
            if not d.is_dir():
                raise _hub_error(huggingface_hub.utils.RepositoryNotFoundError, f"404 {repo_id}")
            return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())

        def hf_hub_download(repo_id, filename, *, revision=None, cache_dir=None, local_files_only=False, **kw):
            assert not local_files_only
            hub.downloaded.append((repo_id, filename, revision))
            src = hub.root / repo_id / filename
            if not src.is_file():
                raise _hub_error(huggingface_hub.utils.EntryNotFoundError, f"404 {filename}")
            dst = hub.root.parent / "cache" / repo_id / (revision or "main") / filename
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
            return str(dst)

        monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
        return self


def test_hub_id_through_mocked_download(ref, tmp_path, monkeypatch):
    _clean_env(monkeypatch)
    hub = FakeHub(tmp_path / "remote").install(monkeypatch)
    repo = tmp_path / "remote" / "someorg" / "tiny-codec"
    ref["codec"].save_pretrained(repo)                    # config.yaml + model.safetensors + model.ckpt
    (repo / "README.md").write_text("card")
    _same_model(load_codec("someorg/tiny-codec", revision="v1.0"), ref)
    assert hub.listed == [("someorg/tiny-codec", "v1.0")]
    # only what is needed: the config and the safetensors weights (not model.ckpt, not the card)
    assert hub.downloaded == [("someorg/tiny-codec", "config.yaml", "v1.0"),
                              ("someorg/tiny-codec", "model.safetensors", "v1.0")]

    # the released repo's names: the checkpoint only -> the shipped released config
    rel = tmp_path / "remote" / "fdugyt" / "XY_Tokenizer"
    rel.mkdir(parents=True)
    shutil.copy(TINY_A / "model.ckpt", rel / "xy_tokenizer.ckpt")
    (rel / ".gitattributes").write_text("")
    hub.downloaded.clear()
    files = resolve_codec_files("fdugyt/XY_Tokenizer")
    assert files.bundled_config and Path(files.weights).name == "xy_tokenizer.ckpt"
    assert hub.downloaded == [("fdugyt/XY_Tokenizer", "xy_tokenizer.ckpt", None)]
    # with the config beside it (either name), that config is used
    shutil.copy(TINY_A / "config.yaml", rel / "xy_tokenizer_config.yaml")
    _same_model(load_codec("fdugyt/XY_Tokenizer"), ref)

    # a repo without known files: the error lists what is there
    other = tmp_path / "remote" / "someorg" / "not-a-codec"
    other.mkdir(parents=True)
    (other / "pytorch_model.bin").write_text("x")
    (other / "config.json").write_text("{}")
    with pytest.raises(PretrainedNotFoundError, match=r"someorg/not-a-codec: no codec weights in the hub repo.*"
                                                      r"found: config.json, pytorch_model.bin"):
        load_codec("someorg/not-a-codec")
    with pytest.raises(PretrainedNotFoundError, match=r"someorg/missing: no such hub repo"):
        load_codec("someorg/missing")


def _hf_cache(cache: Path, repo_id: str, files: dict, ref_name="main", sha=SHA) -> None:
    """A huggingface_hub cache entry: models--ORG--NAME/refs/<ref> -> sha, snapshots/<sha>/<file>."""
    d = cache / ("models--" + repo_id.replace("/", "--"))
    (d / "refs").mkdir(parents=True, exist_ok=True)
    (d / "refs" / ref_name).write_text(sha)
    for name, src in files.items():
        dst = d / "snapshots" / sha / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)


def test_offline_reads_the_real_hf_cache(ref, tmp_path, monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")   # set after import: honoured through local_files_only
    # any network attempt would fail loudly
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files",
                        lambda *a, **k: pytest.fail("listed the hub while offline"))
    m = ref["codec"].save_pretrained(tmp_path / "m", ckpt=False)
    cache = tmp_path / "hf_cache"
    _hf_cache(cache, "someorg/tiny-codec", {"config.yaml": m / "config.yaml", "model.safetensors": m / "model.safetensors"})
    _same_model(load_codec("someorg/tiny-codec", cache_dir=cache), ref)
    # a tag resolved through refs/, and a revision that is not cached
    _hf_cache(cache, "someorg/tiny-codec", {}, ref_name="v1")
    _same_model(load_codec("someorg/tiny-codec", cache_dir=cache, revision="v1"), ref)
    with pytest.raises(PretrainedNotFoundError, match=r"someorg/tiny-codec@v2: none of .* local Hugging Face "
                                                      r"cache.*HF_HUB_OFFLINE is set"):
        load_codec("someorg/tiny-codec", cache_dir=cache, revision="v2")
    with pytest.raises(PretrainedNotFoundError, match=r"someorg/uncached: none of"):
        load_codec("someorg/uncached", cache_dir=cache)

    # the CLI: encode + decode --model ID with the cache from huggingface_hub's default location
    from xytok.bin import decode, encode
    from xytok.io_codes import read_codes

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    wav_dir = tmp_path / "wavs"
    wav_dir.mkdir()
    sf.write(wav_dir / "a.wav", ref["wavs"][0].numpy(), 16000)
    assert encode.main(["--model", "someorg/tiny-codec", str(wav_dir), str(tmp_path / "codes.scp"),
                        "--no_progress"]) == 0
    np.testing.assert_array_equal(read_codes(str(tmp_path / "codes.scp"))["a"], ref["codes"][0].numpy())
    assert decode.main(["--model", "someorg/tiny-codec", str(tmp_path / "codes.scp"), str(tmp_path / "dec"),
                        "--subtype", "FLOAT", "--no_progress"]) == 0
    out, _ = sf.read(tmp_path / "dec" / "a.wav", dtype="float32")
    np.testing.assert_array_equal(out, ref["audio"][0].numpy())
    # a --model that is not cached: one clear error, exit status 1
    assert encode.main(["--model", "someorg/uncached", str(wav_dir), str(tmp_path / "c2.scp"),
                        "--no_progress"]) == 1
    assert encode.main(["--model", "someorg/tiny-codec", "--config", "x.yaml", str(wav_dir),
                        str(tmp_path / "c3.scp")]) == 1


# --------------------------------------------------------------------------- pack and upload
def _exp(ref, tmp_path):
    """A stage-2 exp as the trainer leaves it, but with an old export (model.ckpt only)."""
    exp = tmp_path / "exp" / "stage2_tiny"
    (exp / "export").mkdir(parents=True)
    shutil.copy(TINY_A / "config.yaml", exp / "export" / "config.yaml")
    shutil.copy(TINY_A / "model.ckpt", exp / "export" / "model.ckpt")
    (exp / "config.yaml").write_text("task: stage2\noptim:\n  lr: 0.0001\n")
    results = tmp_path / "RESULTS.md"
    results.write_text("| model | PESQ-WB |\n| --- | --- |\n| stage2_tiny | 1.23 |\n")
    return exp, results


def test_pack_then_load_and_the_model_card(ref, tmp_path):
    from xytok.bin.pack_model import main as pack_main

    exp, results = _exp(ref, tmp_path)
    out = exp / "packed"
    assert pack_main(["--exp_dir", str(exp), "--out", str(out), "--results", str(results),
                      "--repo_id", "someorg/tiny-codec", "--license", "apache-2.0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "RESULTS.md", "config.yaml", "meta.json",
                                                     "model.ckpt", "model.safetensors", "train_config.yaml"]
    _same_model(load_codec(out), ref)                                            # safetensors
    _same_model(load_codec(out / "config.yaml", out / "model.ckpt"), ref)        # released format
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "xytok" and front["license"] == "apache-2.0"
    assert {"audio", "speech", "codec"} <= set(front["tags"])
    assert 'load_codec("someorg/tiny-codec")' in card and "xytok encode --model someorg/tiny-codec" in card
    assert "| stage2_tiny | 1.23 |" in card and "lr: 0.0001" in card
    nq, cb = ref["codec"].num_quantizers, ref["codec"].codebook_size
    assert f"{nq} x {cb} RVQ codes at 12.5 Hz" in card
    import hashlib
    import json

    meta = json.loads((out / "meta.json").read_text())
    assert meta["sha256"]["model.safetensors"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    # --no_ckpt: safetensors only (a re-pack removes the old ckpt)
    assert pack_main(["--exp_dir", str(exp), "--out", str(out), "--no_ckpt"]) == 0
    assert not (out / "model.ckpt").exists() and "model.ckpt" not in (out / "README.md").read_text()
    _same_model(load_codec(out), ref)
    # an exp without export/
    with pytest.raises(SystemExit, match=r"export missing"):
        pack_main(["--exp_dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "p")])


class FakeApi:
    calls = []

    def __init__(self, *a, **k):
        pass

    def create_repo(self, repo_id, **kw):
        FakeApi.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, **kw):
        FakeApi.calls.append(("upload_folder", kw["repo_id"], kw))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc"})()


def test_upload_uses_hfapi_with_the_folder_and_repo(ref, tmp_path, monkeypatch):
    from xytok.bin.pack_model import build_pack
    from xytok.bin.upload_model import main as upload_main

    _clean_env(monkeypatch)
    exp, results = _exp(ref, tmp_path)
    packed = build_pack(exp, exp / "packed", results)
    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert upload_main(["--folder", str(packed), "--repo_id", "someorg/tiny-codec", "--private"]) == 0
    (c1, repo1, kw1), (c2, repo2, kw2) = FakeApi.calls
    assert (c1, repo1, kw1["private"], kw1["exist_ok"], kw1["repo_type"]) == ("create_repo", "someorg/tiny-codec", True, True, "model")
    assert (c2, repo2, kw2["folder_path"], kw2["repo_type"]) == ("upload_folder", "someorg/tiny-codec", str(packed), "model")
    FakeApi.calls = []
    with pytest.raises(SystemExit, match=r"expected ORG/NAME"):
        upload_main(["--folder", str(packed), "--repo_id", "no-org"])
    with pytest.raises(SystemExit, match=r"not a packed model, missing config.yaml, README.md, model.safetensors"):
        upload_main(["--folder", str(tmp_path), "--repo_id", "someorg/x"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match=r"HF_HUB_OFFLINE is set"):
        upload_main(["--folder", str(packed), "--repo_id", "someorg/x"])
    assert FakeApi.calls == []


FAKE_PYTHON = r'''#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
'''


def test_recipe_stages_11_and_12(ref, tmp_path):
    """Stage 11 packs (real python), stage 12 uploads only with --hub_repo (stand-in python)."""
    rdir = make_recipe(tmp_path, "librispeech")
    export = rdir / "exp" / "stage2_train_stage2" / "export"
    export.mkdir(parents=True)
    shutil.copy(TINY_A / "config.yaml", export / "config.yaml")
    shutil.copy(TINY_A / "model.ckpt", export / "model.ckpt")
    (rdir / "RESULTS.md").write_text("| model | STOI |\n| --- | --- |\n| tiny | 0.5 |\n")
    r = run("./run.sh --stage 11 --stop_stage 11 --hub_repo someorg/tiny-codec", rdir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    packed = export.parent / "packed"
    _same_model(load_codec(packed), ref)
    card = (packed / "README.md").read_text()
    assert 'load_codec("someorg/tiny-codec")' in card and "| tiny | 0.5 |" in card

    fake = tmp_path / "fakepy"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    r = run(f"./run.sh --stage 12 --stop_stage 12 --python {fake}", rdir, {"FAKE_LOG": str(log)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Stage 12: nothing uploaded: no --hub_repo" in r.stdout and not log.exists()
    r = run(f"./run.sh --stage 12 --stop_stage 12 --python {fake} --hub_repo someorg/tiny-codec --hub_private true",
            rdir, {"FAKE_LOG": str(log)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert log.read_text().splitlines() == [
        "-m xytok.bin.upload_model --folder exp/stage2_train_stage2/packed --repo_id someorg/tiny-codec --private"]
    r = run("./run.sh --help", rdir)
    assert "--hub_repo" in r.stdout and "--hub_private" in r.stdout
