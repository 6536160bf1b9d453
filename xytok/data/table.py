"""Kaldi tables (`<id> <value>` per line: wav.scp, text, utt2spk, ...): the one reader and writer.

Every module that reads a table uses :func:`iter_table` / :func:`read_table`, so one file gives
the same ids, values and error messages wherever it is read. Two levels of strictness:

* ``strict=True`` (data dirs, as utils/validate_data_dir.sh wants them): an empty line, a line
  starting with whitespace, a carriage return (DOS line ending) and ids out of LC_ALL=C byte order
  are problems;
* ``strict=False`` (lists a user hands to a tool: wav.scp for encode, scoring lists): blank lines
  are skipped, surrounding whitespace is ignored, any order.

Both: invalid UTF-8 and (unless ``unique=False``) a repeated id are problems; ``require_value=True`` makes an id without a
value one. Without ``problems`` the first problem raises :class:`TableError` (``path:line: ...``);
with a list, problems are appended to it and the line is skipped (the first of duplicate ids is
kept; an out-of-order line is kept). Values keep their inner whitespace; trailing blanks are cut.

Stdlib only (the utils/ wrappers run with any python3) and imports nothing from xytok.
"""
from __future__ import annotations

import os
import re
from typing import IO, Dict, Iterable, Iterator, List, Optional, Tuple, Union

PathOrFile = Union[str, "os.PathLike[str]", IO]

# `<id>` then optionally blanks and the value; trailing blanks are not part of the value.
_STRICT_LINE = re.compile(r"^(\S+)(?:[ \t]+(.*?))?[ \t]*$")


class TableError(ValueError):
    """A table that cannot be read as asked; the message starts with `path:line:` (or `path:`)."""


class UnsortedTableError(TableError):
    """A strict table whose ids are not in LC_ALL=C order (callers may sort a copy and retry)."""


def byte_key(s: str) -> bytes:
    """Sort key of LC_ALL=C (byte order of the UTF-8 encoding)."""
    return s.encode("utf-8")


def sorted_ids(ids: Iterable[str]) -> List[str]:
    return sorted(ids, key=byte_key)


def _lines(source: PathOrFile) -> Tuple[str, Iterator[Union[bytes, str]], Optional[IO]]:
    if hasattr(source, "read"):
        return getattr(source, "name", "<stream>"), iter(source), None
    name = os.fspath(source)
    try:
        f = open(name, "rb")
    except OSError as e:
        raise TableError(f"{name}: cannot read: {e}") from None
    return name, iter(f), f


def iter_table(source: PathOrFile, *, strict: bool = False, require_value: bool = False,
               unique: bool = True, problems: Optional[List[str]] = None, key_name: str = "id",
               expect: str = "'<id> <value>'") -> Iterator[Tuple[str, str, int]]:
    """(id, value, line number) of each usable line of a table file (or open file), streaming.

    See the module docstring for `strict`, `require_value` and `problems`; `unique=False` lets an
    id repeat (id lists, as Kaldi's filter_scp.pl reads them). `key_name` and
    `expect` only word the messages (e.g. "utterance id", "'uttid path' or 'uttid command |'").
    Duplicates are found with a dict of the ids seen, except in strict mode without `problems`
    (sorted input, so a duplicate is the previous line): then memory stays constant.
    """
    name, lines, handle = _lines(source)
    track_all = unique and not (strict and problems is None)
    seen: Dict[str, int] = {}
    prev: Optional[str] = None
    prev_lineno = 0
    unsorted_reported = False

    def problem(msg: str, error=TableError) -> None:
        if problems is None:
            raise error(msg)
        problems.append(msg)

    try:
        for lineno, raw in enumerate(lines, 1):
            if isinstance(raw, bytes):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    problem(f"{name}:{lineno}: not valid UTF-8")
                    continue
            else:
                line = raw
            line = line[:-1] if line.endswith("\n") else line
            if strict:
                if line.endswith("\r"):
                    problem(f"{name}:{lineno}: line ends with a carriage return (DOS line endings)")
                    line = line.rstrip("\r")
                m = _STRICT_LINE.match(line)
                if not m:
                    problem(f"{name}:{lineno}: " + ("empty line" if not line.strip() else "line starts with whitespace"))
                    continue
                key, value = m.group(1), m.group(2) or ""
            else:
                parts = line.strip().split(maxsplit=1)
                if not parts:
                    continue
                key, value = parts[0], parts[1] if len(parts) > 1 else ""
            if require_value and not value:
                problem(f"{name}:{lineno}: malformed line (expected {expect}), no value after {key_name} "
                        f"'{key}': {line!r}")
                continue
            first = seen.get(key) if track_all else (prev_lineno if unique and key == prev else None)
            if first is not None:
                problem(f"{name}:{lineno}: duplicate {key_name} '{key}' (first on line {first})")
                continue
            if strict and prev is not None and byte_key(key) < byte_key(prev) and not unsorted_reported:
                problem(f"{name}:{lineno}: not sorted (LC_ALL=C): '{key}' comes after '{prev}' "
                        f"(utils/fix_data_dir.sh sorts a data dir)", UnsortedTableError)
                unsorted_reported = True
            if track_all:
                seen[key] = lineno
            prev, prev_lineno = key, lineno
            yield key, value, lineno
    finally:
        if handle is not None:
            handle.close()


def read_table(source: PathOrFile, problems: Optional[List[str]] = None, **options) -> Dict[str, str]:
    """{id: value} in file order; `options` as for :func:`iter_table`."""
    return {key: value for key, value, _ in iter_table(source, problems=problems, **options)}


def write_table(path: str, table: Dict[str, str]) -> None:
    """Write sorted by id in byte order, atomically; an empty value writes the id alone."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for key in sorted_ids(table):
            value = table[key]
            f.write(f"{key} {value}\n" if value != "" else f"{key}\n")
    os.replace(tmp, path)


__all__ = ["TableError", "UnsortedTableError", "byte_key", "sorted_ids", "iter_table", "read_table", "write_table"]
