"""Shared helpers for the recipe tests: a throw-away copy of egs/<corpus> and a runner."""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_recipe(tmp: Path, corpus: str) -> Path:
    """egs/<corpus> laid out under tmp (outputs go there, not into the repo), linking shared parts."""
    src = REPO / "egs" / corpus
    d = tmp / corpus
    d.mkdir(parents=True)
    for name in ("run.sh", "db.sh"):
        shutil.copy2(src / name, d / name)
    for name in ("local", "conf"):
        os.symlink(src / name, d / name)
    os.symlink(REPO / "utils", d / "utils")
    # a copy, not a link: bash reads a script as it runs, so an edit to the template while a test
    # runs would otherwise change the running recipe
    shutil.copy2(REPO / "egs" / "TEMPLATE" / "xytok.sh", d / "xytok.sh")
    for name in ("path.sh", "cmd.sh"):
        os.symlink(REPO / "egs" / "TEMPLATE" / name, d / name)
    return d


def run(cmd, cwd, env_extra=None, timeout=600):
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)  # let path.sh pick tools/venv
    env.update({"OMP_NUM_THREADS": "1", "XYTOK_CMD_BACKEND": "local"})
    env.update(env_extra or {})
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          shell=isinstance(cmd, str))


def read_kv(path: Path) -> dict:
    out = {}
    for line in Path(path).read_text().splitlines():
        k, _, v = line.partition(" ")
        out[k] = v
    return out


def assert_c_sorted(path: Path) -> None:
    keys = [line.split(" ", 1)[0] for line in Path(path).read_text().splitlines()]
    assert keys == sorted(keys, key=str.encode), f"{path} is not sorted in C order"
    assert len(keys) == len(set(keys)), f"{path} has duplicate keys"


def sigkill_when_exists(cmd, marker: Path, timeout: float, **popen_kwargs) -> None:
    """Start cmd and SIGKILL it as soon as `marker` exists (a crash mid-run, for resume tests)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen_kwargs)
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"the run ended before {marker} appeared, so it could not be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


WORDS = ("THE BIRCH CANOE SLID ON SMOOTH PLANKS GLUE SHEET TO DARK BLUE BACKGROUND IT IS EASY TELL "
         "DEPTH OF A WELL THESE DAYS CHICKEN LEG RARE DISH RICE OFTEN SERVED IN ROUND BOWLS").split()


def write_voiced_wav(path: Path, seconds: float, rate: int, seed: int) -> None:
    """A short voiced-speech stand-in (harmonics of a gliding f0 under a syllable envelope + noise)."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110 + 40 * rng.random() + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wav = sum(np.sin(k * phase) / k for k in range(1, 8))
    wav *= 0.5 + 0.5 * np.sin(2 * np.pi * (3 + rng.random()) * t) ** 2  # ~4 syllables per second
    wav = 0.15 * wav / np.abs(wav).max() + 0.005 * rng.standard_normal(len(t))
    sf.write(path, wav.astype(np.float32), rate, subtype="PCM_16")


def make_pipe_corpus(root: Path, rows, seed: int = 0) -> Path:
    """A `path|speaker|text|set` corpus (egs/TEMPLATE's layout) under root: rows of
    (file name, speaker, set, seconds, sample rate); audio under root/wav/<speaker>/, random
    transcripts. Returns root/metadata.txt."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = []
    for i, (name, spk, dset, seconds, rate) in enumerate(rows):
        rel = Path("wav") / spk / name
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_voiced_wav(root / rel, seconds, rate, seed + i)
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 7))))
        lines.append(f"{rel}|{spk}|{text.capitalize()}.|{dset}")
    (root / "metadata.txt").write_text("\n".join(lines) + "\n")
    return root / "metadata.txt"
