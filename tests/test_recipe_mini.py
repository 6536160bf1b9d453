"""egs/mini stages 1-4: generated corpus, splits, features (checked against the official mel), tokenizer."""
import shutil
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from recipe_helpers import assert_c_sorted, make_recipe, read_kv, run  # noqa: E402
from golden import TINY_A

GOLDEN = TINY_A / "expected_short.npz"
NEEDS = [t for t in ("flite", "sox") if shutil.which(t) is None]
if not Path("/usr/share/pocketsphinx/test/data/librivox/transcription").exists():
    NEEDS.append("pocketsphinx-testdata")


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    if NEEDS:
        pytest.fail(f"egs/mini needs the Debian packages {NEEDS}: run tools/install.sh")
    tmp = tmp_path_factory.mktemp("mini")
    rdir = make_recipe(tmp, "mini")
    r = run("./run.sh --stage 1 --stop_stage 4", rdir, {"MINI_CORPUS": str(tmp / "db")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return rdir, r


def test_splits(mini):
    rdir, r = mini
    sizes = {}
    texts = {}
    for s in ("train", "dev", "test"):
        d = rdir / "dump" / "raw" / s
        for f in ("wav.scp", "text", "utt2spk", "spk2utt", "feats.scp", "utt2num_samples"):
            assert_c_sorted(d / f)
        texts[s] = read_kv(d / "text")
        sizes[s] = len(texts[s])
        spks = set(read_kv(d / "utt2spk").values())
        assert {"1001", "1002", "1003", "1004", "1005", "1006"} <= spks
    assert sizes == {"train": 1400, "dev": 30, "test": 35}
    # split by sentence: no dev/test sentence occurs in training
    train_sents = set(texts["train"].values())
    assert len(train_sents) == 130 + 600  # Harvard lists 1-10, 13-15 + local/extra_sentences.txt
    assert not train_sents & set(texts["dev"].values())
    assert not train_sents & set(texts["test"].values())
    assert texts["test"]["9000-1-0880"] == "HE WAS NOT AN ILL DISPOSED YOUNG MAN"
    assert texts["train"]["1001-1-0101"] == "THE BIRCH CANOE SLID ON THE SMOOTH PLANKS"
    # each extra sentence is read by two voices, three speakers apart
    assert texts["train"]["1001-1-10101"] == texts["train"]["1004-1-10101"] == \
        "A COPPER KETTLE WHISTLED ON THE BACK OF THE STOVE"
    for n in (1, 2, 3, 4):
        assert f"Stage {n}:" in r.stdout
    assert "Successfully finished. [elapsed=" in r.stdout


def test_plan_extra_sentences():
    from xytok.bin.make_mini_corpus import CorpusError, plan, read_sentences

    recipe = Path(__file__).resolve().parents[1] / "egs" / "mini" / "local"
    harvard = read_sentences(str(recipe / "harvard_sentences.txt"))
    extra = {(101, 1): "One more line.", (101, 2): "And another one."}
    rows = plan(harvard, extra, extra_voices=3)
    added = [r for r in rows if r[2] in ("10101", "10102")]
    assert len(added) == 6 and {r[0] for r in added} == {"train"}
    assert len({(r[1], r[2]) for r in added}) == 6  # three distinct voices per sentence
    assert len(rows) == len(plan(harvard)) + 6
    with pytest.raises(CorpusError, match="list numbers >= 100"):
        plan(harvard, {(12, 1): "clash with a test list"})
    with pytest.raises(CorpusError, match="extra_voices"):
        plan(harvard, extra, extra_voices=7)


def test_features_match_official_mel(mini):
    """The real LibriVox utterance 0870 is in the test set; the official extractor's mel of it ships."""
    rdir, _ = mini
    feats = dict(kaldiio.load_scp(str(rdir / "dump/raw/test/feats.scp")))
    n = {k: int(v) for k, v in read_kv(rdir / "dump/raw/test/utt2num_samples").items()}
    for utt, mat in feats.items():
        assert mat.shape == (-(-n[utt] // 160), 80)
    g = np.load(GOLDEN)
    n_frames = int(g["mel_lengths"][0])
    official = g["input_features"][0, :, :n_frames].T
    mine = feats["9000-1-0870"]
    assert mine.shape == official.shape
    # FFT rounding moves low-energy bins at the 1e-5 level (golden README section 5); the model's
    # own front-end test uses the same 5e-5 tolerance.
    np.testing.assert_allclose(mine, official, rtol=0, atol=5e-5)


def test_tokenizer(mini):
    import sentencepiece as spm

    rdir, _ = mini
    d = rdir / "data/token_list/unigram100"
    tokens = (d / "tokens.txt").read_text().splitlines()
    assert len(tokens) == 100 and tokens[:2] == ["<pad>", "<unk>"]
    sp = spm.SentencePieceProcessor(model_file=str(d / "bpe.model"))
    text = "THE BIRCH CANOE SLID ON THE SMOOTH PLANKS"
    assert sp.decode(sp.encode(text)) == text


def test_rerun_is_fast_and_skips(mini):
    rdir, _ = mini
    r = run("./run.sh --stage 1 --stop_stage 4", rdir, {"MINI_CORPUS": str(rdir.parent / "db")})
    assert r.returncode == 0
    assert "corpus already complete" in r.stdout + r.stderr
    assert "already trained" in r.stdout
