"""utils/run.pl, stdout.pl and slurm.pl (with a fake sbatch/squeue on PATH)."""
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

UTILS = Path(__file__).resolve().parent.parent / "utils"


def call(tool, *args, cwd, env=None):
    return subprocess.run([str(UTILS / tool), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=120)


def test_run_pl_job_substitution_and_log_format(tmp_path):
    r = call("run.pl", "JOB=1:4", "log/x.JOB.log", "echo", "job JOB of 4", "&&", "echo", "out.JOB",
             ">", "out.JOB.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for j in range(1, 5):
        log = (tmp_path / f"log/x.{j}.log").read_text().splitlines()
        assert log[0].startswith("# echo 'job") and f"job {j} of 4" in log[0]
        assert log[1].startswith("# Started at")
        assert f"job {j} of 4" in log
        assert log[-1].startswith("# Ended (code 0)") and "elapsed time" in log[-1]
        assert (tmp_path / f"out.{j}.txt").read_text() == f"out.{j}\n"


def test_run_pl_single_job_form(tmp_path):
    r = call("run.pl", "log/one.log", "echo hello | tr a-z A-Z", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "HELLO" in (tmp_path / "log/one.log").read_text().splitlines()


# Each job adds a marker file, records how many markers exist (= jobs running now), waits,
# then removes its marker: the largest recorded count is the observed concurrency.
CONCURRENCY_JOB = ("mkdir -p running && touch running/JOB && ls running | wc -l > count.JOB && "
                   "sleep 0.4 && {wait} rm running/JOB")


def max_concurrency(tmp_path, n):
    return max(int((tmp_path / f"count.{j}").read_text()) for j in range(1, n + 1))


def test_run_pl_honours_max_jobs_run(tmp_path):
    r = call("run.pl", "--max-jobs-run", "2", "JOB=1:6", "log/c.JOB.log",
             CONCURRENCY_JOB.format(wait=""), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert max_concurrency(tmp_path, 6) <= 2


def test_run_pl_runs_all_jobs_at_once_by_default(tmp_path):
    # each job waits (up to 20 s, before finishing) until all 4 have started: only possible if
    # they run in parallel
    wait = "mkdir -p started && touch started/JOB; for i in $(seq 200); do " \
           "[ $(ls started | wc -l) -ge 4 ] && break; sleep 0.1; done; ls started | wc -l > seen.JOB;"
    r = call("run.pl", "JOB=1:4", "log/c.JOB.log", CONCURRENCY_JOB.format(wait=wait), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert all(int((tmp_path / f"seen.{j}").read_text()) == 4 for j in range(1, 5))


def test_run_pl_failure_reports_failing_log(tmp_path):
    r = call("run.pl", "JOB=1:3", "log/f.JOB.log",
             'if [ JOB -eq 2 ]; then echo "something broke in JOB"; exit 3; fi', cwd=tmp_path)
    assert r.returncode == 1
    assert "1 / 3 failed" in r.stderr and "JOB=2" in r.stderr
    assert "log/f.2.log" in r.stderr and "something broke in 2" in r.stderr
    assert "# Ended (code 3)" in (tmp_path / "log/f.2.log").read_text()
    assert "# Ended (code 0)" in (tmp_path / "log/f.1.log").read_text()


def test_run_pl_sets_threads_and_rejects_bad_usage(tmp_path):
    r = call("run.pl", "--num_threads", "3", "--gpu", "1", "--mem", "2G", "log/t.log",
             "echo", "threads=$OMP_NUM_THREADS", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "threads=3" in (tmp_path / "log/t.log").read_text()
    r = call("run.pl", "JOB=1:2", "log/same.log", "true", cwd=tmp_path)
    assert r.returncode == 1 and "JOB" in r.stderr
    r = call("run.pl", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "max_jobs_run" in r.stdout


def test_stdout_pl_copies_output(tmp_path):
    r = call("stdout.pl", "JOB=1:2", "log/s.JOB.log", "echo", "line-JOB", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == ["line-1", "line-2"]
    assert "line-2" in (tmp_path / "log/s.2.log").read_text()


# ---------------------------------------------------------------------------------------------
# slurm.pl

FAKE_SBATCH = textwrap.dedent("""\
    #!/usr/bin/env bash
    # Fake sbatch: records its arguments, then runs the job script once per array task (tasks
    # listed in $FAKE_SBATCH_SKIP are "killed": never run), and prints a job id like --parsable.
    printf '%s\\n' "$@" > "$FAKE_DIR/sbatch.args"
    array=""
    for a in "$@"; do case "$a" in --array=*) array=${a#--array=} ;; esac; done
    script=${!#}
    if [ -n "$array" ]; then
        range=${array%%%*}
        for t in $(seq "${range%-*}" "${range#*-}"); do
            case " ${FAKE_SBATCH_SKIP:-} " in *" $t "*) continue ;; esac
            SLURM_ARRAY_TASK_ID=$t SLURM_JOB_ID=4242 bash "$script" >/dev/null 2>&1
        done
    else
        SLURM_JOB_ID=4242 bash "$script" >/dev/null 2>&1
    fi
    echo 4242
    """)


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "squeue").write_text("#!/bin/sh\nexit 0\n")  # the job has left the queue
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho node-a\necho node-b\n")
    # fake srun: run the command once per task with SLURM_PROCID set
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nn=1\nwhile [ "${1#--}" != "$1" ]; do '
                                  'case $1 in --ntasks=*) n=${1#--ntasks=};; esac; shift; done\n'
                                  'for i in $(seq 0 $((n - 1))); do SLURM_PROCID=$i "$@" || exit; done\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_DIR=str(tmp_path),
               XYTOK_SLURM_POLL="0.05", XYTOK_SLURM_GRACE="0.2")
    work = tmp_path / "work"
    work.mkdir()
    return work, env


def sbatch_args(work):
    return (work.parent / "sbatch.args").read_text().splitlines()


def test_slurm_pl_maps_options_through_config(fake_slurm):
    work, env = fake_slurm
    (work / "conf").mkdir()
    (work / "conf/slurm.conf").write_text((UTILS / "slurm.conf").read_text())
    r = call("slurm.pl", "--gpu", "2", "--mem", "4G", "--num_threads", "3", "--max_jobs_run", "2",
             "--time", "1:00:00", "JOB=1:3", "exp/log/enc.JOB.log", "echo", "task", "JOB",
             cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    args = sbatch_args(work)
    joined = " ".join(args)
    assert "--gres=gpu:2" in args and "-p" in args and "gpu" in args
    assert "--mem-per-cpu 4G" in joined and "--cpus-per-task 3" in joined
    assert "--time 1:00:00" in joined and "--export=PATH" in args
    assert "--array=1-3%2" in args
    for t in (1, 2, 3):
        log = (work / f"exp/log/enc.{t}.log").read_text()
        assert f"task {t}" in log.splitlines() and "# Ended (code 0)" in log


def test_slurm_pl_default_gpu_and_exact_option(fake_slurm, tmp_path):
    work, env = fake_slurm
    conf = tmp_path / "my.conf"
    conf.write_text("command sbatch --export=PATH\noption gpu=* --gres=gpu:$0\noption gpu=0 -p cpu\n"
                    "default gpu=0\noption mem=* --mem $0\n")
    r = call("slurm.pl", "--config", conf, "log/one.log", "echo", "hi", cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    args = sbatch_args(work)
    assert "-p" in args and "cpu" in args and not any(a.startswith("--gres") for a in args)
    assert not any(a.startswith("--array") for a in args)
    assert "hi" in (work / "log/one.log").read_text().splitlines()
    r = call("slurm.pl", "--config", conf, "--num_threads", "2", "log/two.log", "true",
             cwd=work, env=env)
    assert r.returncode == 1 and "--num_threads" in r.stderr and "my.conf" in r.stderr


def test_slurm_pl_failure_propagates(fake_slurm):
    work, env = fake_slurm
    r = call("slurm.pl", "JOB=1:3", "log/f.JOB.log", 'echo "bad input in JOB" >&2; [ JOB -ne 3 ]',
             cwd=work, env=env)
    assert r.returncode == 1
    assert "1 / 3 failed" in r.stderr and "log/f.3.log" in r.stderr
    assert "bad input in 3" in r.stderr


def test_slurm_pl_task_killed_without_status(fake_slurm):
    work, env = fake_slurm
    env = dict(env, FAKE_SBATCH_SKIP="2")
    r = call("slurm.pl", "JOB=1:3", "log/k.JOB.log", "true", cwd=work, env=env)
    assert r.returncode == 1
    assert "JOB=2" in r.stderr and "no exit status" in r.stderr


def test_slurm_pl_submission_failure(fake_slurm):
    work, env = fake_slurm
    (work.parent / "fakebin/sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition' >&2\nexit 1\n")
    r = call("slurm.pl", "log/x.log", "true", cwd=work, env=env)
    assert r.returncode == 1 and "invalid partition" in r.stderr


def test_slurm_pl_multi_node_runs_once_per_node(fake_slurm):
    work, env = fake_slurm
    r = call("slurm.pl", "--gpu", "4", "--num_nodes", "2", "log/train.log",
             'echo "rank $SLURM_PROCID master $MASTER_ADDR"', cwd=work, env=env)
    assert r.returncode == 0, r.stderr
    args = sbatch_args(work)
    assert "--nodes" in args and args[args.index("--nodes") + 1] == "2"
    assert "--gres=gpu:4" in args
    log = (work / "log/train.log").read_text().splitlines()
    assert "rank 0 master node-a" in log and "rank 1 master node-a" in log


def test_slurm_pl_master_port_is_configurable(fake_slurm):
    work, env = fake_slurm
    cmd = ["--num_nodes", "2", "log/train.log", 'echo "port $MASTER_PORT"']
    assert call("slurm.pl", *cmd, cwd=work, env=env).returncode == 0
    assert "port 29500" in (work / "log/train.log").read_text()
    assert call("slurm.pl", *cmd, cwd=work, env=dict(env, MASTER_PORT="29611")).returncode == 0
    assert "port 29611" in (work / "log/train.log").read_text()
    assert call("slurm.pl", "--master_port", "29612", *cmd, cwd=work, env=env).returncode == 0
    assert "port 29612" in (work / "log/train.log").read_text()
    (work / "conf").mkdir()
    (work / "conf/slurm.conf").write_text((UTILS / "slurm.conf").read_text() + "default master_port=29613\n")
    assert call("slurm.pl", *cmd, cwd=work, env=env).returncode == 0
    assert "port 29613" in (work / "log/train.log").read_text()
    r = call("slurm.pl", "--master_port", "http", *cmd, cwd=work, env=env)
    assert r.returncode == 1 and "--master_port (or $MASTER_PORT) must be a port" in r.stderr
