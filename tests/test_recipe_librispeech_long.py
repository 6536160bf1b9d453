"""Issue 11's acceptance check: egs/librispeech's paper-size stage-1 config on a LibriSpeech-layout
tree of 12-25 s utterances, dumped as tar shards (stage 2 --audio_format shards): every item that
carries text is a whole utterance (`--dump_batches`), and the sharded dir trains like a file dir."""
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from recipe_helpers import REPO, make_recipe, read_kv, run  # noqa: E402

# (speaker, chapter) -> utterance durations in seconds; 33 s is longer than stage 2's 30-s limit
TREE = {("103", "1240"): [12.3, 18.9, 24.7, 33.0], ("1034", "121119"): [15.2, 21.6]}
WORDS = "HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS".split()


def _tree(root: Path, part: str, spk_offset: int, rng) -> dict:
    made = {}
    for (spk, chap), durs in TREE.items():
        spk = str(int(spk) + spk_offset)  # speakers (and so utterance ids) differ between parts
        d = root / "LibriSpeech" / part / spk / chap
        d.mkdir(parents=True)
        lines = []
        for i, dur in enumerate(durs):
            utt = f"{spk}-{chap}-{i:04d}"
            n = int(dur * 16000) + int(rng.integers(0, 1280))
            wav = 0.1 * np.sin(np.arange(n) * 0.03) + 0.01 * rng.standard_normal(n)
            sf.write(d / f"{utt}.flac", wav.astype(np.float32), 16000, subtype="PCM_16")
            text = " ".join(rng.choice(WORDS, size=8 + i))
            lines.append(f"{utt} {text}")
            made[utt] = (n, text)
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return made


def test_paper_config_dump_batches_on_long_sharded_librispeech(tmp_path):
    rng = np.random.default_rng(0)
    made = {}
    for k, part in enumerate(("train-clean-100", "dev-clean", "test-clean")):
        made.update(_tree(tmp_path / "corpus", part, 5000 * k, rng))
    rdir = make_recipe(tmp_path, "librispeech")
    cmd = ("./run.sh --stage 1 --stop_stage 2 --train_set train_clean_100 --valid_set dev_clean "
           "--test_sets test_clean --nj 2 --audio_format shards --shard_size_mb 1 "
           "--local_data_opts \"--download false --parts 'train-clean-100 dev-clean test-clean'\"")
    r = run(cmd, rdir, {"LIBRISPEECH": str(tmp_path / "corpus")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    train = rdir / "dump/raw/train_clean_100"
    scp = read_kv(train / "wav.scp")
    assert all(".tar:" in v for v in scp.values()), "stage 2 --audio_format shards points into tar shards"
    assert len(list((rdir / "dump/raw/org/train_clean_100/data").glob("*.tar"))) >= 2
    assert len(scp) == 5, "the 33-s utterance is dropped by stage 2's 30-s limit"

    out = rdir / "exp/dump"
    res = run([sys.executable, "-m", "xytok.bin.train", "--config", "conf/train_stage1.yaml",
               "--train_data", str(train), "--output_dir", str(out), "--dump_batches", "10"], rdir,
              {"PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-3000:]
    items = [json.loads(line) for line in (out / "batches.jsonl").read_text().splitlines()]
    assert sorted(it["utt_id"] for it in items) == sorted(scp), "one epoch of this corpus, each item once"
    for it in items:
        n, text = made[it["utt_id"]]
        assert it["text"] == text
        assert it["start"] == 0 and it["num_samples"] == n // 1280 * 1280, f"{it} is not the whole utterance"
    assert not (out / "checkpoint.pth").exists(), "--dump_batches builds no model and trains nothing"

    crop = run([sys.executable, "-m", "xytok.bin.train", "--config", "conf/train_stage1.yaml",
                "--train_data", str(train), "--output_dir", str(out), "--dump_batches", "1",
                "--data.crop_seconds", "10.24"], rdir, {"PYTHONPATH": str(REPO)})
    assert crop.returncode != 0 and "data.crop_seconds=10.24 with the ASR loss on" in crop.stderr
