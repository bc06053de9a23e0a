"""One policy for the folders the server prepares from other files and keeps in its cache
(a converted original-layout checkpoint, a thinking adapter rewritten for vLLM's LoRA).

A prepared folder records, in a marker file, what it was built from: a format version and,
for each source, its resolved path and the size and mtime of every file it is built from.
It is reused while the sources still give that record, and rebuilt otherwise: into a fresh
folder next to it, renamed into place once complete, so the folder is always either the
old one or the complete new one.
"""

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """A folder a prepared folder is built from, and which of its files count."""

    path: Path
    pattern: str = "**/*"


def fingerprint(folder: Path, pattern: str = "**/*") -> dict[str, list[int]]:
    """Relative path -> [size, mtime_ns] of the files matching `pattern`: cheap, and it
    changes with any rewrite of a file."""
    result = {}
    for path in sorted(p for p in Path(folder).glob(pattern) if p.is_file()):
        stat = path.stat()
        result[path.relative_to(folder).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return result


def source_key(version: int, sources: dict[str, Source]) -> dict:
    """What a prepared folder records about its sources; it is reused while this matches."""
    return {
        "version": version,
        "sources": {name: str(Path(s.path).resolve()) for name, s in sources.items()},
        "fingerprints": {name: fingerprint(s.path, s.pattern) for name, s in sources.items()},
    }


def recorded(folder: Path, marker: str) -> dict | None:
    """The record of a prepared folder, or None when there is no complete one."""
    try:
        return json.loads((Path(folder) / marker).read_text())
    except (OSError, ValueError):
        return None


def matches(record: dict | None, key: dict) -> bool:
    return record is not None and all(record.get(k) == v for k, v in key.items())


def build(dst: Path, marker: str, key: dict, write: Callable[[Path], dict]) -> dict:
    """Run `write` on a fresh folder next to `dst`, record `key` and what `write` returns
    in its marker, then rename it into place; nothing is left behind when `write` fails.
    Returns the record."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        record = {**key, **write(tmp)}
        (tmp / marker).write_text(json.dumps(record, indent=1) + "\n")
        _move_into_place(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def prepare(dst: Path, marker: str, key: dict, write: Callable[[Path], dict]) -> tuple[dict, bool]:
    """The record of `dst`, built first unless it was built from sources that still give
    `key`; the flag says whether it was built now."""
    record = recorded(dst, marker)
    if matches(record, key):
        return record, False
    return build(dst, marker, key, write), True


def _move_into_place(tmp: Path, dst: Path) -> None:
    """Renames only, so DST is either the old folder or the complete new one."""
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old)
    else:
        tmp.rename(dst)
