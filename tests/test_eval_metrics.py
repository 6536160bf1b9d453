"""Metric wrappers vs direct library calls, and every failure path (recorded, never a fake value)."""
import numpy as np
import pytest
import soundfile as sf
from pesq import pesq
from pystoi import stoi

from xytok.eval.metrics import (MetricError, align_lengths, compute_signal_metrics, pesq_score,
                                stoi_score)
from xytok.eval.stats import mean_ci

LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav"


@pytest.fixture(scope="module")
def speech():
    x, sr = sf.read(LIBRIVOX)
    assert sr == 16000
    return x[: 3 * sr]  # 3 s keeps the tests fast


@pytest.fixture(scope="module")
def noisy(speech):
    rng = np.random.default_rng(0)
    noise = rng.normal(size=speech.shape)
    noise *= np.sqrt(np.mean(speech**2) / np.mean(noise**2)) / np.sqrt(10)  # 10 dB SNR
    return speech + noise


def test_identity_known_values(speech):
    v, f, cut = compute_signal_metrics(speech, speech, ["pesq_wb", "pesq_nb", "stoi", "estoi"])
    assert not f and cut == 0
    # Known values of pesq 0.0.4 for x vs x (environment notes: WB 4.644, NB 4.549).
    assert v["pesq_wb"] == pytest.approx(4.644, abs=2e-3)
    assert v["pesq_nb"] == pytest.approx(4.549, abs=2e-3)
    assert v["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert v["estoi"] == pytest.approx(1.0, abs=1e-6)


def test_noisy_matches_direct_calls(speech, noisy):
    v, f, _ = compute_signal_metrics(speech, noisy, ["pesq_wb", "pesq_nb", "stoi", "estoi"])
    assert not f
    assert v["pesq_wb"] == pytest.approx(pesq(16000, speech, noisy, "wb"), abs=1e-6)
    assert v["pesq_nb"] == pytest.approx(pesq(16000, speech, noisy, "nb"), abs=1e-6)
    assert v["stoi"] == pytest.approx(stoi(speech, noisy, 16000, extended=False), abs=1e-9)
    assert v["estoi"] == pytest.approx(stoi(speech, noisy, 16000, extended=True), abs=1e-9)
    # 10 dB white noise is clearly degraded (reference means on LibriVox: WB 1.05, NB 1.72, STOI 0.90).
    assert 1.0 < v["pesq_wb"] < 1.6 and 1.2 < v["pesq_nb"] < 2.5 and 0.8 < v["stoi"] < 0.97
    assert v["pesq_nb"] > v["pesq_wb"]


def test_length_alignment_truncates_and_records(speech, noisy):
    r, d, cut = align_lengths(speech, noisy[:-1000])
    assert len(r) == len(d) == len(speech) - 1000 and cut == 1000
    v, f, cut = compute_signal_metrics(speech, noisy[:-1000], ["pesq_wb"])
    assert cut == 1000 and not f
    assert v["pesq_wb"] == pytest.approx(pesq(16000, speech[:-1000], noisy[:-1000], "wb"), abs=1e-6)


@pytest.mark.parametrize("func", [lambda r, d: pesq_score(r, d, "wb"), stoi_score])
def test_unaligned_lengths_rejected(speech, func):
    with pytest.raises(MetricError) as e:
        func(speech, speech[:-5])
    assert e.value.reason == "length_mismatch"


def test_failures_recorded_with_reasons(speech):
    metrics = ["pesq_wb", "pesq_nb", "stoi", "estoi"]
    silence = np.zeros(32000)
    _, f, _ = compute_signal_metrics(silence, silence, metrics)
    assert f["pesq_wb"].startswith("pesq_NoUtterancesError") and f["pesq_nb"].startswith("pesq_NoUtterancesError")
    assert f["stoi"].startswith("silent_reference") and f["estoi"].startswith("silent_reference")

    v, f, _ = compute_signal_metrics(speech[:3000], speech[:3000], metrics)  # 0.19 s
    assert not v
    assert f["pesq_wb"].startswith("pesq_BufferTooShortError")
    assert f["stoi"].startswith("too_short")

    # Speech vs an all-zero reconstruction: pesq raises a plain ValueError (NaN) - recorded.
    v, f, _ = compute_signal_metrics(speech, np.zeros_like(speech), ["pesq_wb", "pesq_nb"])
    assert not v and f["pesq_wb"].startswith("pesq_value_error")

    bad = speech.copy()
    bad[100] = np.nan
    _, f, _ = compute_signal_metrics(speech, bad, metrics)
    assert all(r.startswith("non_finite") for r in f.values()) and len(f) == 4

    with pytest.raises(MetricError) as e:
        pesq_score(np.stack([speech, speech]), np.stack([speech, speech]), "wb")
    assert e.value.reason == "not_mono"
    _, f, _ = compute_signal_metrics(np.array([]), np.array([]), metrics)
    assert all(r.startswith("empty") for r in f.values())


def test_mean_ci_excludes_missing():
    s = mean_ci([1.0, 2.0, 3.0, float("nan"), None])
    assert s["n"] == 3 and s["mean"] == pytest.approx(2.0)
    # t(0.975, 2) = 4.302653; sd = 1 -> half-width 4.302653/sqrt(3)
    assert s["ci95"][1] - 2.0 == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)
    assert mean_ci([])["mean"] is None
