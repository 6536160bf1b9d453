"""Train an XY-Tokenizer stage (recipe stages 5 and 6).

  python -m xytok.bin.train --config conf/train_stage1.yaml --output_dir exp/stage1 \
      --train_data dump/raw/train --valid_data dump/raw/dev [--init_param CKPT] [--a.b value ...]

Any `--a.b value` pair not listed below overrides config key a.b (value parsed as YAML).
Re-running the same command in the same output_dir resumes from its checkpoint.pth.
Multi-process: launch with torchrun (`torchrun --nproc_per_node N -m xytok.bin.train ...`), or
pass `--ngpu N` (N > 1) and this script re-launches itself under torchrun. Several nodes: run the
same command on each node with `--num_nodes M --node_rank K --rdzv_endpoint HOST:PORT` (HOST = the
node with rank 0), or under Slurm with MASTER_ADDR/MASTER_PORT exported (utils/slurm.pl does);
see xytok/train/launch.py.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from xytok.train.launch import LaunchError, add_launch_arguments, argv_from_args, needs_launcher

# Intel MKL may pick kernels by memory alignment, so the same matmul can round differently from
# run to run; strict Conditional Numerical Reproducibility makes a resumed CPU run bit-identical.
# Must be set before torch (and MKL) load. Users can override it in the environment.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Unknown --key value pairs override config keys (e.g. --max_steps 100 --optim.lr 1e-4).",
    )
    p.add_argument("--config", help="training YAML (e.g. conf/train_stage1.yaml)")
    p.add_argument("--output_dir", help="exp dir: config.yaml, train.log, metrics.jsonl, checkpoints, export/")
    p.add_argument("--train_data", help="training data dir (wav.scp + text [+ feats.scp, utt2num_samples])")
    p.add_argument("--valid_data", help="validation data dir")
    p.add_argument("--init_param", help="start a NEW run from these weights (released model.ckpt or a "
                                        "training checkpoint); unrelated to resuming")
    p.add_argument("--spm_model", help="sentencepiece model of recipe stage 4 (sets asr.tokenizer.model)")
    add_launch_arguments(p)  # --ngpu --num_nodes --node_rank --rdzv_endpoint --master_port --rdzv_id
    p.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--dump_batches", type=int, metavar="N",
                   help="write <output_dir>/batches.jsonl (one line per item of the first N training "
                        "batches: batch, utt_id, start, num_samples, text) and exit without building a model")
    return p


def main(argv=None) -> int:
    parser = get_parser()
    args, rest = parser.parse_known_args(argv)
    from xytok.train.task import resolve_task_class
    from xytok.train.trainer import load_config, parse_overrides

    try:
        overrides = parse_overrides(rest)
    except ValueError as e:
        parser.error(str(e))
    if args.train_data:
        overrides["data.train"] = args.train_data
    if args.valid_data:
        overrides["data.valid"] = args.valid_data
    if args.spm_model:
        overrides["asr.tokenizer.model"] = args.spm_model
    base = load_config(args.config, overrides)
    task_cls = resolve_task_class(base["task"])
    config = load_config(args.config, overrides, task_defaults=task_cls.default_config)
    if args.print_config:
        yaml.safe_dump(config, sys.stdout, sort_keys=False)
        return 0
    if not args.output_dir:
        parser.error("--output_dir is required")
    if args.dump_batches is not None:
        return _dump_batches(config, Path(args.output_dir), args.dump_batches)

    if needs_launcher(args.ngpu, args.num_nodes):
        # Re-launch this exact command under torchrun: one process per GPU (one per node on CPU),
        # and with --num_nodes > 1 one such launcher per node meeting at the rendezvous point.
        try:
            launcher = argv_from_args(args, args.output_dir)
        except LaunchError as e:
            parser.error(str(e))
        cmd = launcher + ["-m", "xytok.bin.train"] + list(sys.argv[1:] if argv is None else argv)
        logging.getLogger("xytok.train").warning("launching: %s", " ".join(cmd))
        return subprocess.call(cmd)

    from xytok.train.distributed import cleanup_distributed, init_distributed
    from xytok.train.reporter import setup_logging
    from xytok.train.trainer import Trainer

    exp_dir = Path(args.output_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    dist_info = init_distributed(args.ngpu)
    setup_logging(exp_dir, dist_info.rank)
    log = logging.getLogger("xytok.train")
    log.info("command: %s", " ".join([sys.executable, "-m", "xytok.bin.train"] + list(sys.argv[1:])))
    if dist_info.is_main:
        with open(exp_dir / "config.yaml", "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
    import torch.distributed as tdist

    log.info("world_size %d, device %s, process group: %s (DDP %s)", dist_info.world_size, dist_info.device,
             tdist.get_backend() if dist_info.process_group else "none", "on" if dist_info.enabled else "off")
    if dist_info.device.type == "cpu":
        import torch

        log.info("CPU threads: %d", torch.get_num_threads())
    task = task_cls(config, exp_dir)
    trainer = Trainer(config, exp_dir, task, dist_info, init_param=args.init_param)
    trainer.run()
    cleanup_distributed()
    log.info("finished")
    return 0


def _dump_batches(config, out_dir: Path, n: int) -> int:
    from xytok.data.dataset import DataError, dump_batches

    logging.basicConfig(level=logging.INFO, format="%(asctime)s [dump_batches] %(levelname)s %(message)s")
    if not config["data"].get("train"):
        logging.error("--dump_batches needs --train_data")
        return 2
    try:
        written = dump_batches(config, str(out_dir / "batches.jsonl"), n)
    except (DataError, ValueError) as e:
        logging.error("%s", e)
        return 1
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
