"""The torchrun command line for a training run on one or several nodes (no torch import here).

xytok.bin.train re-launches itself with :func:`torchrun_argv` when it needs several processes;
``python -m xytok.train.launch --ngpu 8 --num_nodes 2 ...`` prints that launcher for inspection.

One node (``num_nodes=1``):
    ``torchrun --standalone --nproc_per_node P``: torchrun picks a free port itself. With an
    explicit ``master_port`` the rendezvous is a static one on ``127.0.0.1:PORT`` instead.

Several nodes, one launcher per node, all meeting at ``HOST:PORT``:
    - ``node_rank`` given (the local runner: the user starts the same command on every node with
      ``--node_rank 0 .. N-1``): static rendezvous, ``--nnodes N --node_rank K --rdzv_backend static
      --rdzv_endpoint HOST:PORT``. Node 0 must be HOST; it holds global rank 0 (logs, checkpoints).
    - no ``node_rank`` (Slurm runs one identical command per node): c10d rendezvous,
      ``--nnodes N --rdzv_backend c10d --rdzv_endpoint HOST:PORT --rdzv_id ID``; nodes get their
      rank in order of arrival. ID must be the same on all nodes and unique per run.
    The endpoint is ``rdzv_endpoint`` if given, else ``$MASTER_ADDR:$MASTER_PORT`` of the
    environment (utils/slurm.pl exports both on the nodes). A missing port is ``master_port``,
    else $MASTER_PORT, else 29500.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import List, Mapping, Optional, Tuple

DEFAULT_PORT = 29500


class LaunchError(ValueError):
    """The launch options do not describe a valid run (the message names the option)."""


def _port(value, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise LaunchError(f"{what}: port must be an integer, got {value!r}") from None
    if not 1 <= port <= 65535:
        raise LaunchError(f"{what}: port must be in 1..65535, got {port}")
    return port


def resolve_endpoint(rdzv_endpoint: Optional[str], master_port: Optional[int],
                     env: Mapping[str, str]) -> Tuple[str, int]:
    """(host, port) of the rendezvous: the flag, else MASTER_ADDR/MASTER_PORT of ``env``."""
    if rdzv_endpoint:
        host, sep, port_text = rdzv_endpoint.rpartition(":")
        if not sep:  # "host" without a port
            host, port_text = rdzv_endpoint, ""
        if not host:
            raise LaunchError(f"--rdzv_endpoint {rdzv_endpoint!r}: expected HOST:PORT or HOST")
        if port_text:
            port = _port(port_text, f"--rdzv_endpoint {rdzv_endpoint}")
            if master_port is not None and int(master_port) != port:
                raise LaunchError(f"--rdzv_endpoint {rdzv_endpoint} and --master_port {master_port} "
                                  "give different ports; give the port once")
            return host, port
    else:
        host = env.get("MASTER_ADDR", "")
        if not host:
            raise LaunchError("several nodes need a rendezvous point: pass --rdzv_endpoint HOST:PORT "
                              "(HOST = the node with --node_rank 0), or export MASTER_ADDR "
                              "(utils/slurm.pl does that on the nodes)")
    if master_port is not None:
        return host, _port(master_port, "--master_port")
    if env.get("MASTER_PORT"):
        return host, _port(env["MASTER_PORT"], "MASTER_PORT")
    return host, DEFAULT_PORT


def torchrun_argv(nproc_per_node: int, num_nodes: int = 1, node_rank: Optional[int] = None,
                  rdzv_endpoint: Optional[str] = None, master_port: Optional[int] = None,
                  rdzv_id: str = "xytok", python: Optional[str] = None,
                  env: Optional[Mapping[str, str]] = None) -> List[str]:
    """``[python, -m, torch.distributed.run, ...]`` for one node of the run; append the module
    and its arguments (``-m xytok.bin.train ...``). ``env`` defaults to os.environ."""
    env = os.environ if env is None else env
    nproc, nodes = int(nproc_per_node), int(num_nodes)
    if nproc < 1:
        raise LaunchError(f"processes per node must be >= 1, got {nproc}")
    if nodes < 1:
        raise LaunchError(f"--num_nodes must be >= 1, got {nodes}")
    if node_rank is not None and not 0 <= int(node_rank) < nodes:
        raise LaunchError(f"--node_rank {node_rank} is outside 0..{nodes - 1} (--num_nodes {nodes})")
    argv = [python or sys.executable, "-m", "torch.distributed.run"]
    if nodes == 1 and not rdzv_endpoint:
        if master_port is None:
            return argv + ["--standalone", "--nproc_per_node", str(nproc)]
        port = _port(master_port, "--master_port")
        return argv + ["--nnodes", "1", "--node_rank", "0", "--rdzv_backend", "static",
                       "--rdzv_endpoint", f"127.0.0.1:{port}", "--nproc_per_node", str(nproc)]
    host, port = resolve_endpoint(rdzv_endpoint, master_port, env)
    argv += ["--nnodes", str(nodes)]
    if node_rank is not None:
        argv += ["--node_rank", str(int(node_rank)), "--rdzv_backend", "static"]
    else:
        argv += ["--rdzv_backend", "c10d", "--rdzv_id", str(rdzv_id)]
    return argv + ["--rdzv_endpoint", f"{host}:{port}", "--nproc_per_node", str(nproc)]


def processes_per_node(ngpu: int) -> int:
    """--ngpu 0 (CPU) still runs one process per node."""
    return max(int(ngpu), 1)


def needs_launcher(ngpu: int, num_nodes: int, env: Optional[Mapping[str, str]] = None) -> bool:
    """True when this process should re-launch itself under torchrun: several processes are
    wanted and we are not already a torchrun worker."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env or "TORCHELASTIC_RUN_ID" in env:
        return False
    return int(ngpu) > 1 or int(num_nodes) > 1


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
    """The launch flags shared by xytok.bin.train and this module's command line."""
    p.add_argument("--ngpu", type=int, default=0, help="GPUs per node (0 = CPU) [default: %(default)s]")
    p.add_argument("--num_nodes", type=int, default=1,
                   help="nodes; > 1 starts one torchrun per node meeting at the rendezvous point "
                        "[default: %(default)s]")
    p.add_argument("--node_rank", type=int, default=None,
                   help="this node's rank 0..num_nodes-1 when you start each node yourself (static "
                        "rendezvous; node 0 must be the --rdzv_endpoint host). Omit under Slurm")
    p.add_argument("--rdzv_endpoint", default=None,
                   help="HOST[:PORT] where the nodes meet [default: $MASTER_ADDR:$MASTER_PORT]")
    p.add_argument("--master_port", type=int, default=None,
                   help=f"rendezvous port when --rdzv_endpoint has none [default: $MASTER_PORT, else "
                        f"{DEFAULT_PORT}; one node: a free port]")
    p.add_argument("--rdzv_id", default=None,
                   help="run id shared by the nodes of a c10d rendezvous [default: $SLURM_JOB_ID, "
                        "else the output dir name]")


def default_rdzv_id(output_dir: Optional[str], env: Optional[Mapping[str, str]] = None) -> str:
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_ID"):
        return f"slurm{env['SLURM_JOB_ID']}"
    name = os.path.basename(os.path.normpath(output_dir)) if output_dir else ""
    return name or "xytok"


def argv_from_args(args, output_dir: Optional[str] = None, python: Optional[str] = None) -> List[str]:
    """torchrun_argv for parsed :func:`add_launch_arguments` flags."""
    return torchrun_argv(processes_per_node(args.ngpu), args.num_nodes, args.node_rank,
                         args.rdzv_endpoint, args.master_port,
                         args.rdzv_id or default_rdzv_id(output_dir), python=python)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m xytok.train.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_launch_arguments(p)
    p.add_argument("--output_dir", default=None, help="exp dir (names the default --rdzv_id)")
    args = p.parse_args(argv)
    try:
        words = argv_from_args(args, args.output_dir)
    except LaunchError as e:
        p.error(str(e))
    print(" ".join(shlex.quote(w) for w in words))
    return 0


if __name__ == "__main__":
    sys.exit(main())
