"""Reading JSON that anyone may have written: bounded in size and nesting depth before it is parsed.

Python's parser recurses once per nesting level (100,000 `[` raise RecursionError), converts integers of any
length (5,000 digits raise ValueError past the int-string limit) and keeps the last of a key an object repeats.
`read_json_file` and `parse_json` refuse those, and anything else that is not JSON, with one error that names the
file; callers pass their own error class.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

#: Deeper than any file seal-trl reads (SQuAD nests 7 levels, a registry manifest about 8).
MAX_DEPTH = 64
#: SQuAD v1.1's training file is 30 MB; a manifest or a document is far smaller.
MAX_BYTES = 256 * 2**20

_STRUCTURAL = re.compile(r'[\[\]{}"\\]')


class JSONFileError(ValueError):
    """A file that is missing, too large, not UTF-8, nested too deeply or not valid JSON."""


def nesting_depth_exceeds(text: str, max_depth: int) -> bool:
    """Whether brackets outside strings nest deeper than `max_depth`; one pass over the structural characters."""
    depth, in_string, escaped = 0, False, -1
    for match in _STRUCTURAL.finditer(text):
        char, pos = match.group(), match.start()
        if in_string:
            if pos == escaped:
                continue
            if char == "\\":
                escaped = pos + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char in "]}":
            depth -= 1
    return False


def parse_json(text: str, where: str, *, max_depth: int = MAX_DEPTH, error: type[ValueError] = JSONFileError,
               hint: str = "") -> Any:
    """`json.loads(text)` after the depth check; every failure is `error` naming `where` (plus `hint`)."""
    import json

    if nesting_depth_exceeds(text, max_depth):
        raise error(f"{where}: JSON nested more than {max_depth} levels deep (refused before parsing){hint}")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except DuplicateKeyError as err:
        raise error(f"{where}: {err}; keep one{hint}") from None
    except json.JSONDecodeError as err:
        raise error(f"{where}: not valid JSON ({err}){hint}") from None
    except (ValueError, RecursionError):  # an integer past Python's int-string limit (4,300 digits)
        raise error(f"{where}: not valid JSON (a number with thousands of digits){hint}") from None


class DuplicateKeyError(ValueError):
    """An object names one key twice (`json.loads` would keep the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise DuplicateKeyError(f"the key {repeated!r} appears twice in one object")
    return obj


def read_json_file(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH,
                   error: type[ValueError] = JSONFileError, hint: str = "") -> Any:
    """The parsed content of a regular UTF-8 JSON file of at most `max_bytes` (a BOM is allowed)."""
    raw = read_bytes(path, max_bytes=max_bytes, error=error, hint=hint)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not a JSON file (byte {err.start} is not valid UTF-8){hint}") from None
    if not text.strip():
        raise error(f"{path}: the file is empty, not JSON{hint}")
    return parse_json(text, str(path), max_depth=max_depth, error=error, hint=hint)


def read_bytes(path: str | os.PathLike, *, max_bytes: int, error: type[ValueError] = JSONFileError,
               hint: str = "") -> bytes:
    """The bytes of a regular file of at most `max_bytes`; anything else is refused before it is read."""
    path = Path(path)
    check_regular_file(path, error=error, hint=hint)
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"{path}: {size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB limit for this file{hint}")
    try:
        with open(path, "rb") as fh:
            return fh.read(max_bytes)  # a file that grows after the size check stays bounded
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror}){hint}") from None


def check_regular_file(path: Path, *, error: type[ValueError] = JSONFileError, hint: str = "") -> None:
    """Refuse a path that does not exist, is a directory, or is a device, FIFO or socket (reads could block)."""
    if path.is_file():
        return
    if path.is_dir():
        raise error(f"{path} is a directory, not a file{hint}")
    if path.exists():
        raise error(f"{path} is not a regular file{hint}")
    raise error(f"{path} does not exist{hint}")
