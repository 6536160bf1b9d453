"""Recipe stage 12: upload a packed model folder (stage 11) to the Hugging Face hub.

  python -m xytok.bin.upload_model --folder exp/stage2_x/packed --repo_id ORG/NAME [--private]

Creates the model repo if needed (``--private`` for a new one; an existing repo keeps its
visibility), then uploads the folder as one commit with ``huggingface_hub.HfApi().upload_folder``.
The token is the user's login (``huggingface-cli login``, or ``HF_TOKEN``). Afterwards
``xytok.load_codec("ORG/NAME")`` and ``xytok encode --model ORG/NAME`` load it.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from xytok.hub import hf_offline

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
REQUIRED = ("config.yaml", "README.md")


def check_folder(folder: Path) -> None:
    """A stage-11 pack: config, weights and model card, or SystemExit naming what is missing."""
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no such directory (run stage 11, pack_model, first)")
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    if not any((folder / w).is_file() for w in ("model.safetensors", "model.ckpt")):
        missing.append("model.safetensors")
    if missing:
        raise SystemExit(f"{folder}: not a packed model, missing {', '.join(missing)} "
                         "(python -m xytok.bin.pack_model writes them)")


def upload(folder: Path, repo_id: str, private: bool = False, revision: str | None = None,
           commit_message: str | None = None) -> str:
    """Create the repo (exist_ok) and upload ``folder``; returns the commit URL."""
    if not REPO_ID.match(repo_id):
        raise SystemExit(f"--repo_id {repo_id!r}: expected ORG/NAME (letters, digits, '-', '_', '.')")
    check_folder(folder)
    if hf_offline():
        raise SystemExit("HF_HUB_OFFLINE is set: uploading needs the network (unset it for this step)")
    try:
        import huggingface_hub as hf
    except ImportError:
        raise SystemExit("uploading needs huggingface_hub: pip install 'xytok[hub]'")
    api = hf.HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                 revision=revision,
                                 commit_message=commit_message or f"Upload {folder.name} (xytok pack_model)")
    except Exception as e:  # auth, permissions, network: one clear line, the hub's reason included
        hint = ""
        if type(e).__name__ == "LocalTokenNotFoundError" or "401" in str(e) or "403" in str(e):
            hint = " (log in with `huggingface-cli login` or set HF_TOKEN, with write access to the org)"
        raise SystemExit(f"upload of {folder} to {repo_id} failed: {type(e).__name__}: {e}{hint}")
    return str(getattr(info, "commit_url", info))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xytok.bin.upload_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", required=True, help="packed model folder (stage 11 output)")
    p.add_argument("--repo_id", required=True, help="hub model repo ORG/NAME (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", help="branch to commit to [default: main]")
    p.add_argument("--commit_message", help="commit message")
    return p


def main(argv=None) -> int:
    a = get_parser().parse_args(argv)
    url = upload(Path(a.folder), a.repo_id, private=a.private, revision=a.revision,
                 commit_message=a.commit_message)
    print(f"uploaded {a.folder} -> https://huggingface.co/{a.repo_id} ({url})")
    print(f'load it with: xytok.load_codec("{a.repo_id}")')
    return 0


if __name__ == "__main__":
    sys.exit(main())
