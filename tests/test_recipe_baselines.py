"""Issue 12 (codec baselines): egs/librispeech stages 7-10 for several codecs on a tiny
LibriSpeech-layout tree — xy (a tiny export), and tiny random DAC and Mimi models saved locally
with save_pretrained — through --inference_models; one exp dir each and one RESULTS.md with a row
each, BPS computed from the codes and a probe WER."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from golden import TINY_A  # noqa: E402
from recipe_helpers import make_recipe, read_kv, run  # noqa: E402
from test_codecs import save_tiny_dac, save_tiny_mimi  # noqa: E402
from test_recipe_librispeech import _make_tree  # noqa: E402


def _table_rows(md: str) -> dict:
    rows = {}
    for line in md.split("### Protocol")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > 3 and cells[0] not in ("Codec", "") and not set(cells[0]) <= set("-:"):
            rows[cells[0]] = cells
    return rows


def test_stages_7_10_for_xy_dac_mimi(tmp_path):
    _make_tree(tmp_path / "corpus", np.random.default_rng(0))
    rdir = make_recipe(tmp_path, "librispeech")
    env = {"LIBRISPEECH": str(tmp_path / "corpus")}
    common = ("--train_set train_clean_100 --valid_set dev_clean --test_sets test_clean --nj 1 --inference_nj 1 "
              "--local_data_opts \"--download false --parts 'train-clean-100 dev-clean test-clean'\" ")
    r = run("./run.sh --stage 1 --stop_stage 2 " + common, rdir, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    xy = rdir / "exp" / "tiny_xy" / "export"
    xy.mkdir(parents=True)
    for f in ("config.yaml", "model.ckpt"):
        shutil.copy2(TINY_A / f, xy / f)
    dac, mimi = save_tiny_dac(tmp_path / "dac_tiny"), save_tiny_mimi(tmp_path / "mimi_tiny")
    models = f"exp/tiny_xy dac:{dac} mimi:{mimi}#--num_quantizers=4"
    r = run(f"./run.sh --stage 7 --stop_stage 10 {common} --inference_models '{models}' "
            "--scoring_metrics stoi --probe_args '--hidden 8 --epochs 1'", rdir, env, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]

    exps = {"tiny_xy": rdir / "exp" / "tiny_xy", "dac_dac_tiny": rdir / "exp" / "dac_dac_tiny",
            "mimi_mimi_tiny_num_quantizers_4": rdir / "exp" / "mimi_mimi_tiny_num_quantizers_4"}
    # (sample rate, codebooks, bps) per model: 4x64 at 12.5 Hz; 4x64 at 50 Hz; 4 of Mimi's 8 at 12.5 Hz
    want = {"tiny_xy": (16000, 4, 300), "dac_dac_tiny": (16000, 4, 1200),
            "mimi_mimi_tiny_num_quantizers_4": (24000, 4, 300)}
    n_test = len(read_kv(rdir / "dump/raw/test_clean/wav.scp"))
    for name, exp in exps.items():
        dec = exp / "decode" / "test_clean"
        info = json.loads((exp / "decode" / "codec_info.json").read_text())
        sr, nq, bps = want[name]
        assert (info["sample_rate"], info["num_quantizers"], info["bps"]) == (sr, nq, bps), info
        assert info["n_utts"] == n_test and abs(info["measured_frame_rate"] - info["frame_rate"]) < 0.2 * info["frame_rate"]
        # decoded audio at the codec's rate (resampled to 16 kHz by scoring)
        wavs = read_kv(dec / "wav" / "wav.scp")
        assert len(wavs) == n_test and sf.info(rdir / next(iter(wavs.values()))).samplerate == sr
        summary = json.loads((dec / "score" / "summary.json").read_text())
        assert summary["metrics"]["stoi"]["n_scored"] == n_test
        # --align_max_lag_ms auto: cross-correlation alignment for the other families, truncation for xy
        assert summary["length_alignment"]["max_lag_ms"] == (0 if name == "tiny_xy" else 20)
        probe = json.loads((exp / "probe" / "probe.json").read_text())
        assert probe["n_valid"] == 2 and probe["wer"] >= 0
    assert json.loads((exps["mimi_mimi_tiny_num_quantizers_4"] / "probe" / "probe.json").read_text())["codec"]["num_quantizers"] == 4

    md = (rdir / "RESULTS.md").read_text()
    rows = _table_rows(md)
    for name, bps in (("tiny_xy", "300"), ("dac_dac_tiny", "1.2k"), ("mimi_mimi_tiny_num_quantizers_4", "300")):
        assert name in rows, md[:3000]
        assert rows[name][1] == bps and rows[name][3] not in ("", "—"), rows[name]  # BPS, probe WER
    assert "### Codecs (BPS from the token streams)" in md and "resampled back to 16 kHz" in md


def test_bad_model_spec_is_refused(tmp_path):
    rdir = make_recipe(tmp_path, "mini")
    base = "./xytok.sh --train_set tr --valid_set dev --test_sets test --stage 7 --stop_stage 7 "
    r = run(base + "--inference_model nope:some/dir", rdir, timeout=120)
    assert r.returncode != 0 and "unknown codec family 'nope'" in r.stdout + r.stderr
    # every spec is checked before the first model runs
    r = run(base + "--inference_models 'dac:x nope:y#--num_quantizers=2'", rdir, timeout=120)
    assert r.returncode != 0 and "bad model 'nope:y'" in r.stdout + r.stderr
    assert "=== model" not in r.stdout + r.stderr
