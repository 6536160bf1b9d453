"""Where the official XY-Tokenizer reference data lives (../shared/golden beside the checkout).

`XYTOK_GOLDEN` overrides it. CI always has it; on a user's machine without it the golden tests
fail with this path in the message rather than pass vacuously.
"""
import os
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def _find() -> Path:
    if os.environ.get("XYTOK_GOLDEN"):
        return Path(os.environ["XYTOK_GOLDEN"])
    for cand in (_REPO.parent / "shared" / "golden", Path("/work/shared/golden")):
        if cand.is_dir():
            return cand
    return _REPO.parent / "shared" / "golden"


GOLDEN = _find()
TINY_A = GOLDEN / "tiny_a"
