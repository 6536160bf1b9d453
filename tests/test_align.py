"""Cross-correlation alignment of reconstructions before signal metrics (xytok.eval.align,
xytok score --align_max_lag_ms)."""
import json

import numpy as np
import pytest
import soundfile as sf

from xytok.eval.align import align_by_xcorr, xcorr_lag


def _speechlike(n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (env * (0.3 * np.sin(2 * np.pi * 180 * t) + 0.1 * rng.standard_normal(n))).astype(np.float32)


@pytest.mark.parametrize("delay", [0, 1, 37, 200, -25])
def test_lag_found(delay):
    x = _speechlike(16000)
    h = np.concatenate([np.zeros(delay, np.float32), x]) if delay >= 0 else x[-delay:]
    assert xcorr_lag(x, h, 320) == delay
    r, hh, lag, cut = align_by_xcorr(x, h, 320)
    assert lag == delay and len(r) == len(hh) and np.allclose(r, hh)
    assert cut == len(x) + len(h) - 2 * len(r)


def test_lag_window_and_silence():
    x = _speechlike(8000)
    h = np.concatenate([np.zeros(500, np.float32), x])
    assert abs(xcorr_lag(x, h, 100)) <= 100  # outside the window: not found, stays within it
    assert xcorr_lag(np.zeros(100), h, 50) == 0 and xcorr_lag(x, h, 0) == 0


def test_score_aligns_delayed_reconstruction(tmp_path):
    from xytok.bin.score import main

    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    ref.mkdir(), hyp.mkdir()
    x = _speechlike(32000)
    sf.write(ref / "u1.wav", x, 16000)
    sf.write(hyp / "u1.wav", np.concatenate([np.zeros(80, np.float32), x]), 16000)  # 5 ms late
    out = {}
    for lag_ms in (0, 20):
        d = tmp_path / f"score{lag_ms}"
        assert main(["--ref", str(ref), "--hyp", str(hyp), "--metrics", "stoi", "--out", str(d),
                     "--align_max_lag_ms", str(lag_ms)]) == 0
        out[lag_ms] = json.loads((d / "summary.json").read_text())
    la = out[20]["length_alignment"]
    assert la["lag_samples_by_utt"] == {"u1": 80} and la["max_lag_ms"] == 20 and "cross-correlation" in la["method"]
    assert "cross-correlation lag within ±20 ms" in out[20]["protocol"]["length_alignment"]
    assert "truncated" in out[0]["protocol"]["length_alignment"]
    assert out[0]["length_alignment"]["n_utts_shifted"] == 0
    assert out[20]["metrics"]["stoi"]["mean"] > 0.99 > out[0]["metrics"]["stoi"]["mean"]
