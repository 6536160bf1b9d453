"""Launch: torchrun command lines for one or several nodes, a torchrun world of one, rank-0-first
loading of pretrained parts, local dirs and HF_HUB_OFFLINE."""
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xytok.hub import resolve_pretrained
from xytok.train.launch import LaunchError, needs_launcher, torchrun_argv

ROOT = Path(__file__).resolve().parents[1]
RUN = ["py", "-m", "torch.distributed.run"]


def test_one_node_is_standalone_unless_a_port_is_given():
    assert torchrun_argv(4, python="py") == RUN + ["--standalone", "--nproc_per_node", "4"]
    assert torchrun_argv(2, master_port=29611, python="py") == RUN + [
        "--nnodes", "1", "--node_rank", "0", "--rdzv_backend", "static",
        "--rdzv_endpoint", "127.0.0.1:29611", "--nproc_per_node", "2"]


def test_nodes_started_by_hand_use_a_static_rendezvous_with_their_rank():
    argv = torchrun_argv(8, num_nodes=2, node_rank=1, rdzv_endpoint="gpu01:29700", python="py", env={})
    assert argv == RUN + ["--nnodes", "2", "--node_rank", "1", "--rdzv_backend", "static",
                          "--rdzv_endpoint", "gpu01:29700", "--nproc_per_node", "8"]
    # a bare host takes --master_port, else $MASTER_PORT, else 29500
    assert torchrun_argv(8, 2, 0, "gpu01", 29800, python="py", env={})[-3] == "gpu01:29800"
    assert torchrun_argv(8, 2, 0, "gpu01", None, python="py", env={"MASTER_PORT": "29900"})[-3] == "gpu01:29900"
    assert torchrun_argv(8, 2, 0, "gpu01", None, python="py", env={})[-3] == "gpu01:29500"


def test_slurm_nodes_meet_at_master_addr_with_c10d():
    env = {"MASTER_ADDR": "node-a", "MASTER_PORT": "29512"}
    argv = torchrun_argv(1, num_nodes=3, rdzv_id="slurm42", python="py", env=env)
    assert argv == RUN + ["--nnodes", "3", "--rdzv_backend", "c10d", "--rdzv_id", "slurm42",
                          "--rdzv_endpoint", "node-a:29512", "--nproc_per_node", "1"]
    # an explicit --master_port beats the exported one
    assert torchrun_argv(1, 3, master_port=29613, python="py", env=env)[-3] == "node-a:29613"


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_nodes=2), "MASTER_ADDR"),
    (dict(num_nodes=2, node_rank=2, rdzv_endpoint="h:1"), "--node_rank 2 is outside 0..1"),
    (dict(num_nodes=2, rdzv_endpoint="h:29500", master_port=29501), "give the port once"),
    (dict(num_nodes=2, rdzv_endpoint="h:http"), "port must be an integer"),
    (dict(num_nodes=0), "--num_nodes must be >= 1"),
    (dict(num_nodes=1, master_port=70000), "1..65535"),
])
def test_bad_launch_options_are_named(kwargs, message):
    with pytest.raises(LaunchError, match=message):
        torchrun_argv(2, python="py", env={}, **kwargs)


def test_relaunch_only_outside_torchrun_and_only_for_several_processes():
    assert not needs_launcher(0, 1, env={}) and not needs_launcher(1, 1, env={})
    assert needs_launcher(2, 1, env={}) and needs_launcher(0, 2, env={}) and needs_launcher(1, 2, env={})
    assert not needs_launcher(8, 2, env={"WORLD_SIZE": "16"})
    assert not needs_launcher(1, 2, env={"TORCHELASTIC_RUN_ID": "x"})


def test_launch_command_line_prints_the_launcher():
    r = subprocess.run([sys.executable, "-m", "xytok.train.launch", "--ngpu", "4", "--num_nodes", "2",
                        "--node_rank", "0", "--rdzv_endpoint", "h1:29555"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1:] == ["-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", "0",
                                    "--rdzv_backend", "static", "--rdzv_endpoint", "h1:29555",
                                    "--nproc_per_node", "4"]
    r = subprocess.run([sys.executable, "-m", "xytok.train.launch", "--num_nodes", "2"],
                       capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                            if k != "MASTER_ADDR"})
    assert r.returncode == 2 and "--rdzv_endpoint" in r.stderr


def test_bin_train_names_a_missing_rendezvous_point(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "WORLD_SIZE")}
    (tmp_path / "c.yaml").write_text("task: stage1\n")
    r = subprocess.run([sys.executable, "-m", "xytok.bin.train", "--config", str(tmp_path / "c.yaml"),
                        "--output_dir", str(tmp_path / "exp"), "--num_nodes", "2"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "--rdzv_endpoint HOST:PORT" in r.stderr


# -- real torchrun worlds on this machine (gloo) -----------------------------------------------

WORKER = textwrap.dedent("""
    import json, os, sys, time
    import torch
    from xytok.train.distributed import init_distributed, local_rank_zero_first, cleanup_distributed
    out = sys.argv[1]
    info = init_distributed(0)
    assert torch.distributed.is_initialized() and info.enabled, "torchrun worker without a process group"
    rank = info.rank
    # a DDP step works in every world, including a world of one
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
    model(torch.ones(2, 3)).sum().backward()
    t = torch.tensor([float(rank + 1)])
    torch.distributed.all_reduce(t)
    with local_rank_zero_first():
        with open(os.path.join(out, "order"), "a") as f:
            f.write(f"start {rank} {time.time():.6f}\\n")
        cache = os.path.join(out, "cache")
        if not os.path.exists(cache):  # stands in for the hub download into the node's cache
            with open(cache, "w") as f:
                f.write(f"rank {rank}")
        hf = os.environ.get("TINY_HF_DIR")
        if hf:
            from xytok.asr.lm import HFCausalLM
            HFCausalLM(hf)
        time.sleep(0.3)
        with open(os.path.join(out, "order"), "a") as f:
            f.write(f"end {rank} {time.time():.6f}\\n")
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"world": info.world_size, "local_rank": info.local_rank, "sum": t.item(),
                   "group": info.process_group, "node": os.environ.get("GROUP_RANK")}, f)
    cleanup_distributed()
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _worker(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "out"
    out.mkdir()
    return script, out


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("tiny_lm")
    cfg = transformers.Qwen2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(d)
    return d


def test_rank0_first_download_then_the_others_offline(tmp_path, tiny_lm_dir):
    """torchrun --nproc_per_node 2: rank 0 runs the load block (and 'downloads') before rank 1
    starts it; rank 1 finds the cache. The block loads a local save_pretrained dir with
    HF_HUB_OFFLINE=1 (no hub call possible: HF_HOME is empty)."""
    script, out = _worker(tmp_path)
    argv = torchrun_argv(2, python=sys.executable) + [str(script), str(out)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=240,
                       env=_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), TINY_HF_DIR=str(tiny_lm_dir)))
    assert r.returncode == 0, r.stderr[-3000:]
    events = [line.split() for line in (out / "order").read_text().splitlines()]
    assert [e[:2] for e in events] == [["start", "0"], ["end", "0"], ["start", "1"], ["end", "1"]]
    assert float(events[1][2]) <= float(events[2][2])  # rank 1 started after rank 0 had finished
    assert (out / "cache").read_text() == "rank 0"
    import json
    assert json.loads((out / "rank1.json").read_text())["sum"] == 3.0


def test_torchrun_world_of_one_has_a_process_group(tmp_path):
    script, out = _worker(tmp_path)
    argv = torchrun_argv(1, python=sys.executable) + [str(script), str(out)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    info = json.loads((out / "rank0.json").read_text())
    assert info["world"] == 1 and info["group"] is True and info["sum"] == 1.0


def test_two_nodes_started_by_hand_meet_at_the_endpoint(tmp_path):
    """Two launchers on this machine stand in for two nodes: the static rendezvous that
    torchrun_argv builds for --node_rank 0/1 forms one world of 2, node 0 holding rank 0."""
    script, out = _worker(tmp_path)
    port = _free_port()
    procs = []
    for node in (1, 0):
        argv = torchrun_argv(1, num_nodes=2, node_rank=node, rdzv_endpoint=f"127.0.0.1:{port}",
                             python=sys.executable, env={}) + [str(script), str(out)]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=_env()))
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    import json
    ranks = {r: json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert all(v["world"] == 2 and v["local_rank"] == 0 and v["sum"] == 3.0 for v in ranks.values())
    assert ranks[0]["node"] == "0" and ranks[1]["node"] == "1"
    # once per node: both nodes' local rank 0 ran the block, each before its node's other ranks
    assert sorted(line.split()[0] for line in (out / "order").read_text().splitlines()) == ["end"] * 2 + ["start"] * 2


def test_local_dirs_and_offline_mode(tmp_path, monkeypatch):
    d = tmp_path / "whisper"
    d.mkdir()
    assert resolve_pretrained(str(d), env={}) == (str(d), {"local_files_only": True})
    assert resolve_pretrained("openai/whisper-small", env={}) == ("openai/whisper-small", {})
    assert resolve_pretrained("openai/whisper-small", env={"HF_HUB_OFFLINE": "1"})[1] == {"local_files_only": True}
    with pytest.raises(FileNotFoundError, match="exp/nothing/here"):
        resolve_pretrained("exp/nothing/here", "Whisper model", env={})
    with pytest.raises(FileNotFoundError, match="no such directory"):
        resolve_pretrained(str(tmp_path / "missing"), env={})


def test_offline_hub_name_fails_fast_naming_the_cause(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from xytok.whisper_init import WhisperInitError, load_hf_whisper_encoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(WhisperInitError, match="HF_HUB_OFFLINE is set"):
        load_hf_whisper_encoder("xytok-test/no-such-whisper")


def test_recipe_multi_node_flags_are_checked_early(tmp_path):
    from recipe_helpers import make_recipe, run

    rdir = make_recipe(tmp_path, "librispeech")
    env = {"MASTER_ADDR": ""}
    r = run("./run.sh --stage 5 --stop_stage 5 --num_nodes 2", rdir, env)
    assert r.returncode != 0 and "--rdzv_endpoint HOST:PORT" in r.stdout + r.stderr
    r = run("./run.sh --stage 5 --stop_stage 5 --num_nodes 2 --node_rank 1", rdir,
            {**env, "XYTOK_CMD_BACKEND": "slurm"})
    assert r.returncode != 0 and "--node_rank is for nodes started by hand" in r.stdout + r.stderr
    r = run("./run.sh --stage 5 --stop_stage 5 --master_port http", rdir, env)
    assert r.returncode != 0 and "--master_port must be a non-negative integer" in r.stdout + r.stderr
    r = run("./run.sh --help", rdir)
    assert all(f in r.stdout for f in ("--node_rank", "--rdzv_endpoint", "--master_port"))


def test_bin_train_relaunches_itself_as_two_nodes(tmp_path):
    """The recipe path: `python -m xytok.bin.train --num_nodes 2 --node_rank K --rdzv_endpoint ...`
    started once per "node" builds its own torchrun launcher and the two form one world of 2."""
    import torch
    from test_train_stage1 import env, make_data_dir, make_spm, write_config  # the stage-1 test's tiny run

    setup = {"train": make_data_dir(tmp_path, "train", 9, 0, with_feats=True),
             "valid": make_data_dir(tmp_path, "valid", 3, 1), "spm": make_spm(tmp_path)}
    config = write_config(tmp_path, setup["spm"], max_steps=2, save_interval=2)
    exp = tmp_path / "exp"
    port = _free_port()
    procs = []
    for node in (1, 0):
        cmd = [sys.executable, "-m", "xytok.bin.train", "--config", str(config), "--output_dir", str(exp),
               "--train_data", str(setup["train"]), "--valid_data", str(setup["valid"]),
               "--valid_interval", "2", "--num_nodes", "2", "--node_rank", str(node),
               "--rdzv_endpoint", f"127.0.0.1:{port}"]
        procs.append(subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    assert "--node_rank 0 --rdzv_backend static --rdzv_endpoint 127.0.0.1:" in outs[1][1]  # "launching: ..."
    state = torch.load(exp / "checkpoint.pth", weights_only=False)
    assert state["world_size"] == 2 and state["step"] == 2 and (exp / "export" / "model.ckpt").exists()
    assert "world_size 2, device cpu, process group: gloo (DDP on)" in (exp / "train.log").read_text()
