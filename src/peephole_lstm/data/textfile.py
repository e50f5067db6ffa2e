"""Reading a user's text file (CSV or corpus) with errors that name the file and the problem."""
from __future__ import annotations

import os
from pathlib import Path

from peephole_lstm.data.base import DataError

_BOMS = {
    b"\xff\xfe": "UTF-16 (little-endian)",
    b"\xfe\xff": "UTF-16 (big-endian)",
}


class DataFileNotFoundError(DataError, FileNotFoundError):
    """The data file does not exist (a DataError, so train.py reports it as one message)."""


class DataPathIsDirectoryError(DataError, IsADirectoryError):
    """The data path names a directory."""


def resolve_file(path: object, what: str) -> Path:
    if path is None or (isinstance(path, str) and not path.strip()):
        raise ValueError(f"path={path!r}: give the path of the {what}")
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path={path!r} must be a string path to the {what}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataFileNotFoundError(f"{what} not found: {str(p)!r} (absolute: {str(p.absolute())!r})")
    if p.is_dir():
        raise DataPathIsDirectoryError(f"{what} path {str(p)!r} is a directory, not a file")
    return p


def read_utf8(path: object, what: str) -> tuple[Path, str]:
    """Whole file decoded as UTF-8 (a UTF-8 byte-order mark is dropped); never guesses another encoding."""
    p = resolve_file(path, what)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {what} {str(p)!r}: {e.strerror or e}") from e
    if not raw:
        raise DataError(f"{what} {str(p)!r} is empty (0 bytes)")
    for bom, name in _BOMS.items():
        if raw.startswith(bom):
            raise DataError(
                f"{what} {str(p)!r} is encoded as {name}, not UTF-8; convert it first, "
                f"e.g. `iconv -f UTF-16 -t UTF-8 in > out`"
            )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        bad = raw[e.start : e.start + 4]
        raise DataError(
            f"{what} {str(p)!r} is not valid UTF-8: byte offset {e.start} (line {line}) has bytes "
            f"{bad!r} ({e.reason}); the file may be Latin-1/cp1252 or binary — convert it to UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 in > out`"
        ) from None
    if not text.strip():
        raise DataError(f"{what} {str(p)!r} contains only whitespace ({len(raw)} bytes)")
    return p, text
