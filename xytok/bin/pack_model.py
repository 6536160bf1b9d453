"""Recipe stage 11: pack a trained model for sharing.

  python -m xytok.bin.pack_model --exp_dir exp/stage2 --out packed/xytok_mini.tar.gz [--results RESULTS.md]
Packs export/config.yaml + export/model.ckpt (released format, loadable by xytok.load_codec and the
official loader), the exp's resolved training config, a README.md and meta.json (xytok/torch
versions, sha256 of the checkpoint). --out ending in .tar.gz/.tgz makes a tarball, else a directory.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_pack(exp_dir: Path, dest: Path, results: Path | None) -> None:
    export = exp_dir / "export"
    for f in ("config.yaml", "model.ckpt"):
        if not (export / f).exists():
            raise SystemExit(f"{export / f} missing: train first (stage 5/6 writes export/)")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(export / "config.yaml", dest / "config.yaml")
    shutil.copy2(export / "model.ckpt", dest / "model.ckpt")
    if (exp_dir / "config.yaml").exists():
        shutil.copy2(exp_dir / "config.yaml", dest / "train_config.yaml")
    if results and results.exists():
        shutil.copy2(results, dest / "RESULTS.md")
    import torch

    import xytok

    meta = {"packed_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "exp_dir": str(exp_dir),
            "xytok_version": getattr(xytok, "__version__", "unknown"), "torch_version": torch.__version__,
            "model_ckpt_sha256": sha256(dest / "model.ckpt")}
    (dest / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (dest / "README.md").write_text(
        f"# XY-Tokenizer model packed by xytok\n\nTrained in `{exp_dir}`.\n\n"
        "```python\nfrom xytok import load_codec\ncodec = load_codec('config.yaml', 'model.ckpt')\n"
        "codes = codec.encode([wav_16k_tensor])\nwavs = codec.decode(codes)\n```\n\n"
        "`model.ckpt` = `{'generator': state_dict}` (released XY-Tokenizer format). "
        "See meta.json for versions and the checksum" + (", RESULTS.md for scores.\n" if results else ".\n"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", required=True, help="training exp dir with export/")
    p.add_argument("--out", required=True, help="*.tar.gz / *.tgz for a tarball, else a directory")
    p.add_argument("--results", help="RESULTS.md to include")
    a = p.parse_args(argv)
    out = Path(a.out)
    results = Path(a.results) if a.results else None
    if out.name.endswith((".tar.gz", ".tgz")):
        with tempfile.TemporaryDirectory() as tmp:
            stem = out.name[: -len(".tar.gz")] if out.name.endswith(".tar.gz") else out.name[:-4]
            build_pack(Path(a.exp_dir), Path(tmp) / stem, results)
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(out.name + ".partial")
            with tarfile.open(partial, "w:gz") as tar:
                tar.add(Path(tmp) / stem, arcname=stem)
            partial.replace(out)
    else:
        build_pack(Path(a.exp_dir), out, results)
    print(f"packed {a.exp_dir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
