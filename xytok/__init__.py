"""xytok: XY-Tokenizer speech codec — inference, training recipes and evaluation."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import xytok` (e.g. by the data-prep tools) does not import torch.
    if name in ("load_codec", "XYTokenizer"):
        from xytok import codec

        return getattr(codec, name)
    raise AttributeError(f"module 'xytok' has no attribute {name!r}")
