"""tools/install.sh picks the torch build from `nvidia-smi -L` (a fake one on PATH here), says why,
and re-installs torch when the choice kept in the venv's stamp changes. Only --print-plan runs:
no apt, no pip, and the venv is a temp dir."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "tools" / "install.sh"
H200 = "GPU 0: NVIDIA H200 (UUID: GPU-5d1c0000-0000-0000-0000-000000000000)"


def _bin(tmp_path, smi=None):
    """A PATH dir with a fake nvidia-smi: smi=None -> none at all; (text, code) -> prints, exits."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    f = d / "nvidia-smi"
    if smi is None:
        f.unlink(missing_ok=True)
    else:
        text, code = smi
        f.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 9\ncat <<'EOF'\n{text}\nEOF\nexit {code}\n")
        f.chmod(0o755)
    return d


def plan(tmp_path, smi=None, *, venv=None, args=("--print-plan",), **env_extra):
    bindir = _bin(tmp_path, smi)
    # /usr/bin etc. stay on PATH for bash tools; a real nvidia-smi there would only be shadowed.
    path = f"{bindir}:" + ":".join(p for p in os.environ["PATH"].split(":") if p and not
                                   os.path.exists(os.path.join(p, "nvidia-smi")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("XYTOK_")}
    env.update(PATH=path, XYTOK_VENV=str(venv or tmp_path / "venv"), XYTOK_TORCH_CPU_INDEX="")
    env.update(env_extra)
    r = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = dict(line.split("=", 1) for line in r.stdout.splitlines())
    return out, r.stderr


def test_gpu_listed_picks_a_cuda_build_and_says_why(tmp_path):
    p, err = plan(tmp_path, (H200, 0))
    assert p["torch_choice"] == "cuda"
    assert "NVIDIA H200" in p["torch_reason"] and "1 GPU" in p["torch_reason"]
    # the +cpu wheel is excluded so that a CPU wheel in pip's find-links cannot win
    assert p["torch_requirement"] == "torch==2.13.0,!=2.13.0+cpu"
    assert p["venv_action"] == "create" and p["torch_reinstall"] == "no"
    assert "torch: cuda build, because nvidia-smi lists 1 GPU(s)" in err


@pytest.mark.parametrize("smi, reason", [
    (None, "no nvidia-smi on PATH"),
    (("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver", 9), "nvidia-smi -L failed"),
    (("No devices found.", 0), "lists no GPU"),
])
def test_no_usable_gpu_picks_the_cpu_build(tmp_path, smi, reason):
    p, err = plan(tmp_path, smi)
    assert p["torch_choice"] == "cpu" and reason in p["torch_reason"]
    assert p["torch_requirement"] == "torch==2.13.0"
    assert "torch: cpu build" in err


def test_cpu_index_is_used_only_when_it_answers(tmp_path):
    idx = tmp_path / "whl_cpu"
    idx.mkdir()
    p, _ = plan(tmp_path, None, XYTOK_TORCH_CPU_INDEX=f"file://{idx}")
    assert p["torch_index"] == f"file://{idx}"
    p, err = plan(tmp_path, None, XYTOK_TORCH_CPU_INDEX=f"file://{tmp_path}/missing")
    assert p["torch_index"] == "" and "does not answer: using pip's configured indexes" in err
    p, _ = plan(tmp_path, (H200, 0), XYTOK_TORCH_CUDA_INDEX="https://download.pytorch.org/whl/cu126")
    assert p["torch_index"] == "https://download.pytorch.org/whl/cu126"


def test_xytok_torch_still_overrides(tmp_path):
    p, _ = plan(tmp_path, (H200, 0), XYTOK_TORCH="torch==2.12.0")
    assert p["torch_choice"] == "custom:torch==2.12.0" and p["torch_requirement"] == "torch==2.12.0"
    assert "XYTOK_TORCH is set" in p["torch_reason"]
    p, _ = plan(tmp_path, (H200, 0), XYTOK_TORCH="")
    assert p["torch_choice"] == "keep" and p["torch_requirement"] == ""


def _fake_venv(tmp_path, stamp_text):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    py = venv / "bin" / "python"
    py.write_text("#!/bin/sh\nexit 1\n")  # exists (the venv is there) but has no torch to ask
    py.chmod(0o755)
    if stamp_text is not None:
        (venv / ".xytok-installed").write_text(stamp_text)
    return venv


def test_stamp_keeps_the_choice_and_a_change_reinstalls_torch(tmp_path):
    venv = _fake_venv(tmp_path, None)
    cpu, _ = plan(tmp_path, None, venv=venv)
    assert cpu["venv_action"] == "install" and cpu["previous_choice"] == ""
    # what install.sh writes after installing the CPU plan: the hash line and the choice
    (venv / ".xytok-installed").write_text(
        subprocess.run(["bash", "-c", f"(cat {ROOT}/setup.py; echo 'torch==2.13.0') | sha1sum | cut -d' ' -f1"],
                       capture_output=True, text=True).stdout + "torch=cpu\n")
    again, _ = plan(tmp_path, None, venv=venv)
    assert again["venv_action"] == "up-to-date" and again["torch_reinstall"] == "no"
    # the same venv on a GPU node: the choice changed, so torch is uninstalled and installed again
    gpu, err = plan(tmp_path, (H200, 0), venv=venv)
    assert gpu["venv_action"] == "install" and gpu["previous_choice"] == "cpu"
    assert gpu["torch_reinstall"] == "yes" and "the venv has the cpu build: it will be re-installed" in err
    # XYTOK_TORCH="" keeps whatever torch is there
    keep, _ = plan(tmp_path, (H200, 0), venv=venv, XYTOK_TORCH="")
    assert keep["torch_reinstall"] == "no"


def test_dry_run_env_and_help(tmp_path):
    p, _ = plan(tmp_path, None, args=(), XYTOK_INSTALL_DRY_RUN="1")
    assert p["torch_choice"] == "cpu" and not (tmp_path / "venv").exists()
    r = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--print-plan" in r.stdout and "XYTOK_TORCH_CUDA_INDEX" in r.stdout
    r = subprocess.run(["bash", str(INSTALL), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument '--bogus'" in r.stderr
