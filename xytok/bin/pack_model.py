"""Recipe stage 11: pack a trained model into a hub-ready folder (or a tarball of it).

  python -m xytok.bin.pack_model --exp_dir exp/stage2_x --out exp/stage2_x/packed \\
      [--results RESULTS.md] [--repo_id ORG/NAME] [--license apache-2.0] [--no_ckpt]

The folder holds what ``xytok.load_codec(FOLDER or "ORG/NAME")`` and the hub need:
  config.yaml         released-format generator config
  model.safetensors   generator weights (safetensors)
  model.ckpt          the same weights as {'generator': state_dict}, the released pickle format that the
                      authors' loader reads (--no_ckpt leaves it out: half the upload)
  README.md           model card: hub front matter (library_name xytok, tags, license), how to load,
                      RESULTS.md and the training config
  train_config.yaml   the exp's resolved training config (when the exp has one)
  RESULTS.md          --results, when given
  meta.json           versions, sizes, sha256 of the weight files
The weights come from EXP/export (or --model_dir: any dir load_codec reads, e.g. a released
xy_tokenizer.ckpt) and are loaded strictly into the model of the config before writing, and the
written safetensors file is read back and compared, so a pack that is written also loads.
--out ending in .tar.gz/.tgz makes a tarball, else a directory. Stage 12 uploads the folder
(python -m xytok.bin.upload_model).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Optional

TAGS = ("audio", "speech", "codec", "audio-tokenizer", "xy-tokenizer")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_source(exp_dir: Optional[Path], model_dir: Optional[Path]):
    from xytok.pretrained import PretrainedNotFoundError, resolve_local_dir

    src = model_dir or (exp_dir / "export" if exp_dir else None)
    if src is None:
        raise SystemExit("give --exp_dir (with export/) or --model_dir")
    if not src.is_dir():
        raise SystemExit(f"{src} missing: train first (stage 5/6 writes export/), or give --model_dir")
    try:
        return resolve_local_dir(src)
    except PretrainedNotFoundError as e:
        raise SystemExit(str(e))


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside ``text``."""
    run = max([len(r) for r in re.findall(r"`+", text)] + [2])
    return "`" * (run + 1)


def model_card(codec, name: str, repo_id: Optional[str], license_id: str, exp_dir: Optional[Path],
               results: Optional[str], train_config: Optional[str], with_ckpt: bool) -> str:
    nq, cb = codec.num_quantizers, codec.codebook_size
    rate = codec.frame_rate  # code frames per second (the 16 kHz input / 1280, whatever the output rate)
    bps = nq * (cb - 1).bit_length() * rate
    n_params = sum(p.numel() for p in codec.parameters())
    repo = repo_id or "ORG/NAME"
    front = ["---", "library_name: xytok",
             f"license: {license_id}  # the license of these weights: set it (pack_model --license)",
             "tags:"] + [f"- {t}" for t in TAGS] + ["---", ""]
    body = [
        f"# {name}", "",
        f"XY-Tokenizer speech codec: {codec.input_sample_rate // 1000} kHz speech <-> {nq} x {cb} RVQ codes at "
        f"{rate:g} Hz ({bps:g} bps), {n_params / 1e6:.1f} M generator parameters. "
        f"Trained with xytok ({'exp `' + exp_dir.name + '`, ' if exp_dir else ''}packed on "
        f"{time.strftime('%Y-%m-%d')})." + (f" Decodes to {codec.sample_rate // 1000} kHz." if
                                             codec.sample_rate != codec.input_sample_rate else ""), "",
        "## Use", "",
        "```python",
        "import soundfile as sf, torch",
        "from xytok import load_codec",
        "",
        f'codec = load_codec("{repo}")          # hub id (cached) or a local copy of this folder',
        'wav, sr = sf.read("a.wav", dtype="float32")  # 16 kHz mono',
        f"codes = codec.encode([torch.from_numpy(wav)])  # [LongTensor ({nq}, T)], T = len // {codec.code_hop}",
        "audio = codec.decode(codes)                     # [FloatTensor (samples,)]",
        "```", "",
        "```bash",
        f"xytok encode --model {repo} wavs/ codes/        # or wav.scp, codes.scp",
        f"xytok decode --model {repo} codes/ decoded/",
        "```", "",
        "## Files", "",
        "- `config.yaml`: the generator config (released XY-Tokenizer format).",
        "- `model.safetensors`: the generator weights.",
    ]
    if with_ckpt:
        body.append("- `model.ckpt`: the same weights as `{'generator': state_dict}`, the released "
                    "format read by the authors' XY-Tokenizer code.")
    if train_config is not None:
        body.append("- `train_config.yaml`: the training configuration.")
    body.append("- `meta.json`: versions and checksums.")
    body.append("")
    if results:
        body += ["## Results", "", results.strip(), ""]
    if train_config is not None:
        fence = _fence(train_config)
        body += ["## Training config", "", "<details><summary>train_config.yaml</summary>", "",
                 f"{fence}yaml", train_config.rstrip(), fence, "", "</details>", ""]
    return "\n".join(front + body)


def build_pack(exp_dir: Optional[Path], dest: Path, results: Optional[Path], model_dir: Optional[Path] = None,
               repo_id: Optional[str] = None, license_id: str = "other", ckpt: bool = True) -> Path:
    import torch

    import xytok
    from xytok.checkpoint import load_state_strict, read_generator_state
    from xytok.codec import build_codec
    from xytok.pretrained import write_pretrained

    exp_dir = Path(exp_dir) if exp_dir else None
    files = _model_source(exp_dir, Path(model_dir) if model_dir else None)
    codec = build_codec(files.config)
    load_state_strict(codec, read_generator_state(files.weights), source=files.weights)
    state = codec.state_dict()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for stale in ("model.ckpt", "model.safetensors"):  # a re-pack with --no_ckpt drops the old ckpt
        (dest / stale).unlink(missing_ok=True)
    write_pretrained(state, codec.generator_params, dest, ckpt=ckpt,
                     metadata={"xytok_version": getattr(xytok, "__version__", "unknown")})
    # Read back what was written: the pack must load and hold exactly these tensors.
    back = read_generator_state(dest / "model.safetensors")
    bad = [k for k in state if k not in back or not torch.equal(back[k], state[k].cpu())]
    if bad or len(back) != len(state):
        raise SystemExit(f"{dest / 'model.safetensors'}: read-back differs from the model ({bad[:5]})")

    train_config = None
    if exp_dir and (exp_dir / "config.yaml").is_file():
        shutil.copy2(exp_dir / "config.yaml", dest / "train_config.yaml")
        train_config = (dest / "train_config.yaml").read_text()
    results_text = None
    if results:
        if not Path(results).is_file():
            raise SystemExit(f"--results {results}: no such file (stage 9 writes RESULTS.md)")
        shutil.copy2(results, dest / "RESULTS.md")
        results_text = Path(results).read_text()

    weights = ["model.safetensors"] + (["model.ckpt"] if ckpt else [])
    meta = {"packed_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "exp_dir": str(exp_dir) if exp_dir else None,
            "source_weights": files.weights, "xytok_version": getattr(xytok, "__version__", "unknown"),
            "torch_version": torch.__version__, "num_quantizers": codec.num_quantizers,
            "codebook_size": codec.codebook_size, "num_tensors": len(state),
            "sha256": {w: sha256(dest / w) for w in weights},
            "bytes": {w: (dest / w).stat().st_size for w in weights}}
    (dest / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    name = repo_id.split("/")[-1] if repo_id else (exp_dir.name if exp_dir else dest.name)
    (dest / "README.md").write_text(model_card(codec, name, repo_id, license_id, exp_dir, results_text,
                                               train_config, ckpt))
    return dest


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.pack_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", help="training exp dir (export/ = the weights, config.yaml = the training config)")
    p.add_argument("--model_dir", help="take the weights from this dir instead of EXP/export "
                   "(config.yaml + model.safetensors/model.ckpt, or a released xy_tokenizer.ckpt)")
    p.add_argument("--out", required=True, help="*.tar.gz / *.tgz for a tarball, else a directory")
    p.add_argument("--results", help="RESULTS.md to include (copied, and shown in the model card)")
    p.add_argument("--repo_id", help="ORG/NAME the folder will be uploaded to (used in the card's examples)")
    p.add_argument("--license", default="other",
                   help="license id for the card's front matter, e.g. apache-2.0 [default: %(default)s]")
    p.add_argument("--no_ckpt", action="store_true", help="leave out model.ckpt (safetensors only)")
    return p


def main(argv=None) -> int:
    a = get_parser().parse_args(argv)
    out = Path(a.out)
    kw = dict(results=Path(a.results) if a.results else None, model_dir=a.model_dir, repo_id=a.repo_id,
              license_id=a.license, ckpt=not a.no_ckpt)
    exp_dir = Path(a.exp_dir) if a.exp_dir else None
    if out.name.endswith((".tar.gz", ".tgz")):
        with tempfile.TemporaryDirectory() as tmp:
            stem = out.name[: -len(".tar.gz")] if out.name.endswith(".tar.gz") else out.name[:-4]
            build_pack(exp_dir, Path(tmp) / stem, **kw)
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(out.name + ".partial")
            with tarfile.open(partial, "w:gz") as tar:
                tar.add(Path(tmp) / stem, arcname=stem)
            partial.replace(out)
    else:
        build_pack(exp_dir, out, **kw)
    print(f"packed {a.model_dir or a.exp_dir} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
