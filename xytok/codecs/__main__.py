"""python -m xytok.codecs SPEC: print 'FAMILY LABEL ID' for a [FAMILY:]ID_OR_DIR spec (used by the
recipe to pick the family, a file-name-safe exp dir label, and the model id); exit 1 on a bad spec."""
import sys

from xytok.codecs import FAMILIES, CodecSpecError, parse_spec, spec_label


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__ + "\nfamilies: " + ", ".join(f"{k} ({v[2]})" for k, v in FAMILIES.items()))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        family, ident = parse_spec(argv[0])
    except CodecSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(family, spec_label(argv[0]), ident)
    return 0


if __name__ == "__main__":
    sys.exit(main())
