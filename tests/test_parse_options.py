"""utils/parse_options.sh: spellings, unknown options, strict booleans, --config first, --help."""
import subprocess
import textwrap
from pathlib import Path

import pytest

UTILS = Path(__file__).resolve().parent.parent / "utils"

SCRIPT = textwrap.dedent("""\
    #!/usr/bin/env bash
    set -euo pipefail
    stage=1           # first stage to run
    stop_stage=100    # last stage to run
    use_gpu=false     # whether to use a GPU
    stage1_args=""    # extra training arguments
    SECONDS=0
    _private="$*"
    help_message=$(cat <<EOF
    Usage: $0 [options] <data>
    not_an_option=1
    EOF
    )
    . utils/parse_options.sh
    printf 'stage=%s\\nstop_stage=%s\\nuse_gpu=%s\\nstage1_args=%s\\nrest=%s\\n' \\
        "$stage" "$stop_stage" "$use_gpu" "$stage1_args" "$*"
    """)


@pytest.fixture
def script(tmp_path):
    (tmp_path / "utils").symlink_to(UTILS)
    path = tmp_path / "run.sh"
    path.write_text(SCRIPT)
    path.chmod(0o755)
    return path


def run(script, *args):
    r = subprocess.run([str(script), *args], cwd=script.parent, capture_output=True, text=True)
    values = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    return r, values


def test_defaults_and_positional(script):
    r, v = run(script, "a", "b")
    assert r.returncode == 0, r.stderr
    assert v == {"stage": "1", "stop_stage": "100", "use_gpu": "false", "stage1_args": "",
                 "rest": "a b"}


def test_dash_underscore_equals_and_spaces(script):
    r, v = run(script, "--stop-stage", "5", "--stage=3", "--stage1_args", "--a 1 --b 'x y'",
               "--use_gpu", "true", "data")
    assert r.returncode == 0, r.stderr
    assert v["stop_stage"] == "5" and v["stage"] == "3" and v["use_gpu"] == "true"
    assert v["stage1_args"] == "--a 1 --b 'x y'"
    assert v["rest"] == "data"


def test_double_dash_ends_options(script):
    r, v = run(script, "--stage", "2", "--", "--not-an-option")
    assert r.returncode == 0, r.stderr
    assert v["stage"] == "2" and v["rest"] == "--not-an-option"


def test_unknown_option_fails_naming_it(script):
    r, _ = run(script, "--stag", "3")
    assert r.returncode == 1
    assert "--stag" in r.stderr


def test_missing_value_fails(script):
    r, _ = run(script, "--stage")
    assert r.returncode == 1 and "--stage" in r.stderr


@pytest.mark.parametrize("value", ["yes", "True", "1", ""])
def test_booleans_are_strict(script, value):
    r, _ = run(script, "--use_gpu", value)
    assert r.returncode == 1
    assert "--use_gpu" in r.stderr and "true or false" in r.stderr


def test_config_is_applied_before_other_options(script, tmp_path):
    conf = tmp_path / "my.conf"
    conf.write_text("stage=7\nstop_stage=9\n")
    # --config comes last but the command-line --stage still wins over it
    r, v = run(script, "--stage", "2", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    assert v["stage"] == "2" and v["stop_stage"] == "9"
    r, _ = run(script, "--config", str(tmp_path / "missing.conf"))
    assert r.returncode == 1 and "missing.conf" in r.stderr


def test_help_lists_options_with_defaults(script, tmp_path):
    r, _ = run(script, "--stage", "4", "--help")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Usage:" in out
    for name, default, comment in [("stage", "1", "first stage to run"),
                                   ("stop_stage", "100", "last stage to run"),
                                   ("use_gpu", "false", "whether to use a GPU"),
                                   ("stage1_args", "", "extra training arguments")]:
        line = next(l for l in out.splitlines() if l.strip().startswith(f"--{name} "))
        assert f'(default: "{default}")' in line and comment in line
    # the heredoc body of help_message is not an option, nor help_message itself
    assert "--not_an_option" not in out and "--help_message" not in out
    assert "--SECONDS" not in out and "--_private" not in out
    r2, _ = run(script, "-h")
    assert r2.returncode == 0 and "--stop_stage" in r2.stdout


def test_no_helper_variables_leak(script, tmp_path):
    path = tmp_path / "leak.sh"
    path.write_text("#!/usr/bin/env bash\nset -u\nstage=1\n. utils/parse_options.sh\n"
                    "compgen -v __po_ || true\ndeclare -F __po_die || true\n")
    path.chmod(0o755)
    r = subprocess.run([str(path), "--stage", "2"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
