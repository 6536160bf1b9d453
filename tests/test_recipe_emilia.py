"""egs/emilia: data prep from both Emilia layouts (HF tar shards, original jsonl) made here with real
MP3s, stages 1-6 of the recipe on each, shard download with a stand-in hub, bad-input errors."""
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from recipe_helpers import assert_c_sorted, make_recipe, read_kv, run  # noqa: E402

from xytok.audio import load_audio, parse_tar_member  # noqa: E402
from xytok.bin import emilia_data  # noqa: E402
from xytok.bin.emilia_data import DataPrepError, Filters, download, prepare  # noqa: E402

SR = 24000  # Emilia's MP3s are 24 kHz mono
EN_WORDS = "the quick brown fox jumps over a lazy dog while birds sing softly".split()
ZH_CHARS = list("我们今天天气很好你吃饭了吗这是一个测试句子")
LOW_DNSMOS = 2.5  # below the test's --min_dnsmos 3.0
MIN_DUR = 0.4     # the test's --min_duration: a 0.3 s utterance is dropped


def _mp3(seconds: float, freq: float, rng) -> bytes:
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(n)
    buf = io.BytesIO()
    sf.write(buf, wav.astype(np.float32), SR, format="MP3")
    return buf.getvalue()


def _utts(lang: str, batch: str, n_spk: int, spk0: int, rng, yodas: bool = False):
    """Metadata + MP3 bytes for n_spk speakers with 2-3 utterances each; special cases on speaker 0."""
    out = []
    for s in range(spk0, spk0 + n_spk):
        if yodas:  # Emilia-YODAS: ids do not start with the speaker label
            spk, ids = f"{lang}_vid{s}-Ab_SPEAKER_00", [f"{lang}_vid{s}-Ab_W{w:06d}" for w in range(2)]
        else:
            spk = f"{lang}_{batch}_S{s:05d}"
            ids = [f"{spk}_W{w:06d}" for w in range(2 + s % 2)]
        for w, uid in enumerate(ids):
            dur = float(rng.uniform(0.5, 2.0))
            if lang == "ZH":
                text = "".join(rng.choice(ZH_CHARS, size=4 + w))
            else:
                text = " " + " ".join(rng.choice(EN_WORDS, size=3 + w)) + "."  # Emilia texts start with a space
            meta = {"id": uid, "wav": f"{lang}_{batch}/{spk}/mp3/{uid}.mp3", "text": text, "duration": round(dur, 3),
                    "speaker": spk, "language": lang.lower(), "dnsmos": round(float(rng.uniform(3.1, 3.6)), 4)}
            out.append((meta, dur))
    # speaker 0 of each batch: one low-DNSMOS and one too-short utterance (dropped by the filters)
    if not yodas:
        spk = f"{lang}_{batch}_S{spk0:05d}"
        for w, (dnsmos, dur) in enumerate([(LOW_DNSMOS, 1.0), (3.3, 0.3)], start=10):
            uid = f"{spk}_W{w:06d}"
            out.append(({"id": uid, "wav": f"{lang}_{batch}/{spk}/mp3/{uid}.mp3", "text": "dropped",
                         "duration": dur, "speaker": spk, "language": lang.lower(), "dnsmos": dnsmos}, dur))
    return [(m, _mp3(d, 150 + 30 * i, rng)) for i, (m, d) in enumerate(out)]


def _tar(path: Path, items, json_first: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for meta, mp3 in items:
            parts = [(f"{meta['id']}.json", json.dumps(meta).encode()), (f"{meta['id']}.mp3", mp3)]
            for name, data in (parts if json_first else parts[::-1]):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))


def make_hf_tree(root: Path, seed: int = 0) -> dict:
    """Emilia/{EN,ZH}/<LANG>-B00000x.tar (+ one Emilia-YODAS shard); returns utt id -> (meta, mp3)."""
    rng = np.random.default_rng(seed)
    shards = {
        "Emilia/EN/EN-B000000.tar": _utts("EN", "B00000", 2, 0, rng),
        "Emilia/EN/EN-B000001.tar": _utts("EN", "B00000", 2, 2, rng),
        "Emilia/ZH/ZH-B000000.tar": _utts("ZH", "B00000", 4, 0, rng),
        "Emilia-YODAS/EN/EN-B000000.tar": _utts("EN", "", 1, 7, rng, yodas=True),
    }
    made = {}
    for i, (rel, items) in enumerate(shards.items()):
        _tar(root / rel, items, json_first=i % 2 == 0)  # both member orders occur in the wild
        for meta, mp3 in items:
            made[meta["id"]] = (meta, mp3)
    return made


def make_original_tree(root: Path, seed: int = 1) -> dict:
    """<LANG>/<LANG>_B00000.jsonl + <LANG>/<batch>/<spk>/mp3/<id>.mp3 (the OpenEmilia release)."""
    rng = np.random.default_rng(seed)
    made = {}
    for lang, n_spk in (("EN", 4), ("ZH", 3)):
        items = _utts(lang, "B00000", n_spk, 0, rng)
        lines = []
        for meta, mp3 in items:
            p = root / lang / meta["wav"]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(mp3)
            lines.append(json.dumps(meta, ensure_ascii=False))
            made[meta["id"]] = (meta, mp3)
        (root / lang / f"{lang}_B00000.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return made


def _kept(made: dict) -> dict:
    return {k: v for k, v in made.items() if v[0]["dnsmos"] >= 3.0 and v[0]["duration"] >= MIN_DUR}


def _utt_id(meta: dict) -> str:
    return meta["id"] if meta["id"].startswith(meta["speaker"]) else f"{meta['speaker']}-{meta['id']}"


STAGE_ARGS = ("--stage1_config conf/train_stage1_debug.yaml --stage2_config conf/train_stage2_debug.yaml "
              "--compute_feats true "  # the debug semantic-CTC pre-training reads stage-3 features

              "--nj 2 --ngpu 0 --bpemode char --nbpe 100 --min_wav_duration 0.1 "
              "--stage1_args '--max_steps 2 --log_interval 1 --valid_interval 2 --save_interval 2 "
              "--valid_at_start false --num_examples 1' "
              "--stage2_args '--max_steps 2 --log_interval 1 --valid_interval 2 --save_interval 2 "
              "--disc_start_step 1 --log_examples 0' "
              f"--local_data_opts '--dev_spk 1 --test_spk 1 --min_dnsmos 3.0 --min_duration {MIN_DUR} --nj 2'")


def _run_recipe(tmp: Path, make_tree) -> tuple:
    made = make_tree(tmp / "corpus")
    rdir = make_recipe(tmp, "emilia")
    r = run(f"./run.sh --stage 1 --stop_stage 6 {STAGE_ARGS}", rdir, {"EMILIA": str(tmp / "corpus")}, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return rdir, made, r


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    return _run_recipe(tmp_path_factory.mktemp("emilia_hf"), make_hf_tree)


@pytest.fixture(scope="module")
def orig_run(tmp_path_factory):
    return _run_recipe(tmp_path_factory.mktemp("emilia_orig"), make_original_tree)


def _check_data_dirs(rdir: Path, made: dict, n_langs: int) -> dict:
    kept = {_utt_id(m): (m, mp3) for m, mp3 in _kept(made).values()}
    sets = {}
    for s in ("train", "dev", "test"):
        d = rdir / "data" / s
        for f in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur", "utt2num_samples", "utt2lang"):
            assert_c_sorted(d / f)
        sets[s] = {k: read_kv(d / f) for k, f in (("text", "text"), ("spk", "utt2spk"), ("wav", "wav.scp"),
                                                  ("n", "utt2num_samples"), ("dur", "utt2dur"), ("lang", "utt2lang"))}
    # every kept utterance is in exactly one set, the filtered ones in none
    all_utts = [u for s in sets.values() for u in s["text"]]
    assert sorted(all_utts) == sorted(kept)
    spks = {s: set(v["spk"].values()) for s, v in sets.items()}
    assert not spks["train"] & spks["dev"] and not spks["train"] & spks["test"] and not spks["dev"] & spks["test"]
    for s in ("dev", "test"):  # one held-out speaker per language
        assert len(spks[s]) == n_langs and len({sets[s]["lang"][u] for u in sets[s]["text"]}) == n_langs
    for s, v in sets.items():
        for u, text in v["text"].items():
            meta = kept[u][0]
            assert u.startswith(v["spk"][u]) and v["spk"][u] == meta["speaker"]
            assert text == " ".join(meta["text"].split())
            assert int(v["n"][u]) == round(meta["duration"] * 16000)
            assert abs(float(v["dur"][u]) - meta["duration"]) < 1e-6
            assert v["lang"][u] == meta["language"].upper()
    return sets


def test_hf_layout_recipe(hf_run):
    rdir, made, r = hf_run
    sets = _check_data_dirs(rdir, made, n_langs=2)
    wav = {u: w for v in sets.values() for u, w in v["wav"].items()}
    yodas = [u for u in wav if "SPEAKER_00-" in u]
    assert yodas and all(u.startswith("EN_vid7-Ab_SPEAKER_00-EN_vid7-Ab_W") for u in yodas)
    # wav.scp points into the shards (nothing extracted) and each member decodes to its MP3
    kept = {_utt_id(m): mp3 for m, mp3 in _kept(made).values()}
    for u, w in wav.items():
        tar, off, size = parse_tar_member(w)
        assert Path(tar).is_absolute() and tar.endswith(".tar") and size == len(kept[u])
        assert Path(tar).read_bytes()[off:off + size] == kept[u]
    u = sorted(wav)[0]
    audio = load_audio(wav[u], target_sr=16000)[0]
    ref, sr = sf.read(io.BytesIO(kept[u]), dtype="float32")
    assert sr == SR and abs(len(audio) - len(ref) * 16000 // SR) <= 2
    _check_training(rdir, r)


def test_original_layout_recipe(orig_run):
    rdir, made, r = orig_run
    sets = _check_data_dirs(rdir, made, n_langs=2)
    for v in sets.values():
        for u, w in v["wav"].items():
            assert Path(w).is_absolute() and Path(w).name == u + ".mp3" and Path(w).is_file()
    _check_training(rdir, r)


def _check_training(rdir: Path, r) -> None:
    out = r.stdout + r.stderr
    for n in range(1, 7):
        assert f"Stage {n}:" in out
    assert "Successfully finished. [elapsed=" in out
    for s in ("train", "dev", "test"):
        assert (rdir / "dump/raw" / s / "feats.scp").is_file()
    assert (rdir / "data/token_list/char100/bpe.model").is_file()
    for e in ("stage1_train_stage1_debug", "stage2_train_stage2_debug"):
        assert (rdir / "exp" / e / "export/model.ckpt").is_file(), e
        assert (rdir / "exp" / e / "export/config.yaml").is_file(), e


def test_rerun_skips_prepared_data(hf_run):
    rdir, _, _ = hf_run
    r = run(f"./run.sh --stage 1 --stop_stage 1 {STAGE_ARGS}", rdir, {"EMILIA": str(rdir.parent / "corpus")})
    assert r.returncode == 0 and "already prepared" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_langs_filter_and_split_stability(tmp_path):
    made = make_hf_tree(tmp_path / "c")
    sizes = prepare(tmp_path / "c", tmp_path / "d", ["ZH"], Filters(min_dnsmos=3.0, min_duration=MIN_DUR),
                    n_dev=1, n_test=1)
    zh = {_utt_id(m) for m, _ in _kept(made).values() if m["language"] == "zh"}
    got = {u for s in ("train", "dev", "test") for u in read_kv(tmp_path / "d" / s / "text")}
    assert got == zh and sum(sizes.values()) == len(zh)
    # held-out speakers come from the first shards: adding a shard later does not move them
    held = {s: set(read_kv(tmp_path / "d" / s / "utt2spk").values()) for s in ("dev", "test")}
    _tar(tmp_path / "c/Emilia/ZH/ZH-B000001.tar", _utts("ZH", "B00000", 3, 4, np.random.default_rng(5)))
    prepare(tmp_path / "c", tmp_path / "d2", ["zh"], Filters(min_dnsmos=3.0), n_dev=1, n_test=1)
    assert held == {s: set(read_kv(tmp_path / "d2" / s / "utt2spk").values()) for s in ("dev", "test")}
    # without filters the dropped utterances come back
    prepare(tmp_path / "c", tmp_path / "d3", ["ZH"], n_dev=1, n_test=1)
    got3 = {u for s in ("train", "dev", "test") for u in read_kv(tmp_path / "d3" / s / "text")}
    assert {u for u in got3 if u.endswith(("W000010", "W000011"))}


def _shard(tmp_path, items, name="Emilia/EN/EN-B000000.tar", json_first=True):
    _tar(tmp_path / name, items, json_first)
    return tmp_path


def test_bad_inputs_name_the_file(tmp_path):
    rng = np.random.default_rng(3)
    items = _utts("EN", "B00000", 3, 0, rng)[:4]
    flt = Filters()
    # json without its mp3
    root = tmp_path / "a"
    _tar(root / "Emilia/EN/EN-B000000.tar", items)
    with tarfile.open(root / "Emilia/EN/EN-B000000.tar", "a") as tf:
        data = json.dumps(dict(items[0][0], id="EN_B00000_S00009_W000000", speaker="EN_B00000_S00009")).encode()
        ti = tarfile.TarInfo("EN_B00000_S00009_W000000.json")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(DataPrepError, match=r"EN-B000000.tar: 1 member\(s\) without a pair, e.g. "
                                            r"'EN_B00000_S00009_W000000.json' has no 'EN_B00000_S00009_W000000.mp3'"):
        prepare(root, tmp_path / "out", n_dev=0, n_test=0, flt=flt)
    # bad JSON
    root = tmp_path / "b"
    bad = [(dict(items[0][0]), items[0][1])]
    _tar(root / "Emilia/EN/EN-B000000.tar", bad)
    with tarfile.open(root / "Emilia/EN/EN-B000000.tar", "a") as tf:
        ti = tarfile.TarInfo("EN_B00000_S00008_W000000.json")
        ti.size = 5
        tf.addfile(ti, io.BytesIO(b"{oops"))
    with pytest.raises(DataPrepError, match=r"EN-B000000.tar:EN_B00000_S00008_W000000.json: bad JSON"):
        prepare(root, tmp_path / "out", n_dev=0, n_test=0, flt=flt)
    # missing field
    root = tmp_path / "c"
    meta = {k: v for k, v in items[0][0].items() if k != "speaker"}
    _tar(root / "Emilia/EN/EN-B000000.tar", [(meta, items[0][1])])
    with pytest.raises(DataPrepError, match=r"EN_B00000_S00000_W000000.json: missing field\(s\) speaker"):
        prepare(root, tmp_path / "out", n_dev=0, n_test=0, flt=flt)
    # dnsmos needed only when filtering on it
    meta = {k: v for k, v in items[0][0].items() if k != "dnsmos"}
    _tar(tmp_path / "d/Emilia/EN/EN-B000000.tar", [(meta, items[0][1])])
    with pytest.raises(DataPrepError, match=r"missing field\(s\) dnsmos"):
        prepare(tmp_path / "d", tmp_path / "out", n_dev=0, n_test=0, flt=Filters(min_dnsmos=3.0))
    # duplicate id across two shards
    root = tmp_path / "e"
    _tar(root / "Emilia/EN/EN-B000000.tar", items[:2])
    _tar(root / "Emilia/EN/EN-B000001.tar", items[1:3])
    dup = items[1][0]["id"]
    with pytest.raises(DataPrepError, match=rf"duplicate utterance id '{dup}': in \S*/EN-B000000.tar and \S*/EN-B000001.tar"):
        prepare(root, tmp_path / "out", n_dev=0, n_test=0, flt=flt)
    # a shard cut off inside an mp3 (interrupted copy)
    root = tmp_path / "t"
    _tar(root / "Emilia/EN/EN-B000000.tar", items[:2], json_first=True)
    data = (root / "Emilia/EN/EN-B000000.tar").read_bytes()
    (root / "Emilia/EN/EN-B000000.tar").write_bytes(data[:data.rindex(items[1][1][:64]) + 100])
    with pytest.raises(DataPrepError, match=r"EN-B000000.tar: truncated: member " + items[1][0]["id"] + ".mp3"):
        prepare(root, tmp_path / "out", n_dev=0, n_test=0, flt=flt)
    # the same id twice in one jsonl
    root = tmp_path / "h"
    made = make_original_tree(root)
    jl = root / "EN/EN_B00000.jsonl"
    jl.write_text(jl.read_text() + jl.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataPrepError, match=r"duplicate utterance id 'EN_B00000_S00000_W000000': twice in "
                                            r"\S*/EN/EN_B00000.jsonl"):
        prepare(root, tmp_path / "out", n_dev=0, n_test=0, flt=flt)
    # original layout: an mp3 the jsonl names is missing
    root = tmp_path / "f"
    made = make_original_tree(root)
    meta = next(m for m, _ in made.values() if m["language"] == "zh" and m["dnsmos"] >= 3.0)
    (root / "ZH" / meta["wav"]).unlink()
    with pytest.raises(DataPrepError, match=r"ZH_B00000.jsonl:\d+: audio file not found: .*" + meta["id"] + ".mp3"):
        prepare(root, tmp_path / "out", n_dev=0, n_test=0, flt=flt)
    # unknown language, language not present, nothing there, too few speakers
    with pytest.raises(DataPrepError, match="unknown Emilia language 'xx'"):
        emilia_data.parse_langs("en xx")
    with pytest.raises(DataPrepError, match=r"no Emilia data for DE"):
        prepare(tmp_path / "a", tmp_path / "out", ["DE"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataPrepError, match="no Emilia data found"):
        prepare(tmp_path / "empty", tmp_path / "out")
    make_original_tree(tmp_path / "g")
    with pytest.raises(DataPrepError, match=r"ZH: 3 speaker\(s\) left after filtering"):
        prepare(tmp_path / "g", tmp_path / "out", ["ZH"], n_dev=2, n_test=1)
    assert not (tmp_path / "out").exists()  # nothing written on failure


def test_download_selects_and_skips_present_shards(tmp_path):
    repo = ["README.md", ".gitattributes"] + [f"Emilia/{lang}/{lang}-B{i:06d}.tar" for lang in ("EN", "ZH", "DE")
                                              for i in range(3)]
    repo += [f"Emilia-YODAS/EN/EN-B{i:06d}.tar" for i in range(2)]
    fetched = []

    def fetch(name):
        fetched.append(name)
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        return str(p)

    (tmp_path / "Emilia/EN").mkdir(parents=True)
    (tmp_path / "Emilia/EN/EN-B000000.tar").write_bytes(b"present")
    got = download(tmp_path, ["EN", "ZH"], ["Emilia", "Emilia-YODAS"], max_shards_per_lang=2,
                   list_files=lambda: repo, fetch=fetch)
    assert got == fetched == ["Emilia/EN/EN-B000001.tar", "Emilia/ZH/ZH-B000000.tar", "Emilia/ZH/ZH-B000001.tar",
                              "Emilia-YODAS/EN/EN-B000000.tar", "Emilia-YODAS/EN/EN-B000001.tar"]
    assert (tmp_path / "Emilia/EN/EN-B000000.tar").read_bytes() == b"present"
    # everything present now: nothing fetched again
    assert download(tmp_path, ["EN", "ZH"], ["Emilia", "Emilia-YODAS"], 2, list_files=lambda: repo, fetch=fetch) == []
    assert len(fetched) == 5
    # a hub error (e.g. gated, not logged in) becomes a message that says what to do

    def denied(name):
        raise PermissionError("401 Client Error: access to dataset is restricted")
    with pytest.raises(DataPrepError, match=r"(?s)Emilia/DE/DE-B000000.tar: download failed.*huggingface-cli login"):
        download(tmp_path, ["DE"], list_files=lambda: repo, fetch=denied)


def test_download_uses_huggingface_hub_by_default(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def list_repo_files(self, repo_id, repo_type=None, revision=None):
            calls.append(("list", repo_id, repo_type))
            return ["Emilia/KO/KO-B000000.tar", "Emilia/KO/KO-B000001.tar"]

    def fake_download(repo_id, repo_type, filename, revision, local_dir):
        calls.append(("get", repo_id, repo_type, filename, local_dir))
        p = Path(local_dir) / filename
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        return str(p)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert download(tmp_path, ["KO"], max_shards_per_lang=1) == ["Emilia/KO/KO-B000000.tar"]
    assert calls == [("list", "amphion/Emilia-Dataset", "dataset"),
                     ("get", "amphion/Emilia-Dataset", "dataset", "Emilia/KO/KO-B000000.tar", str(tmp_path))]


def test_data_sh_errors_and_help(tmp_path):
    rdir = make_recipe(tmp_path, "emilia")
    r = run("local/data.sh --dev_spk 1", rdir, {"EMILIA": str(tmp_path / "nowhere")})
    assert r.returncode != 0 and "nowhere" in r.stderr and "does not exist" in r.stderr
    r = run("local/data.sh --download true", rdir, {"EMILIA": str(tmp_path / "nowhere")})
    assert r.returncode != 0 and "--download true needs --langs" in r.stderr
    r = run("local/data.sh --no_such_flag 1", rdir)
    assert r.returncode != 0 and "no_such_flag" in r.stdout + r.stderr
    r = run([sys.executable, "-m", "xytok.bin.emilia_data", "prepare", "--help"], rdir)
    assert r.returncode == 0 and "--min_dnsmos" in r.stdout and "--dev_spk" in r.stdout
    r = run([sys.executable, "-m", "xytok.bin.emilia_data", "download", "--help"], rdir)
    assert r.returncode == 0 and "--max_shards_per_lang" in r.stdout
