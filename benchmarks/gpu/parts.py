"""One .tar.xz stream split into parts of a fixed size, each with its sha256, and back.

Standard library only: the device machine runs `unpack` with the image's Python before
anything is installed. The archive is deterministic (sorted entries, fixed owner and
times), so the same folder gives the same checksums.
"""

import hashlib
import io
import json
import lzma
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

MIB = 1 << 20
FORMAT = "af3-gpu-carry/1"


class PartWriter(io.RawIOBase):
    """A write-only stream cut into files `<name>.part-NN` of `part_size` bytes each (the
    last one shorter), hashing each part and the whole."""

    def __init__(self, folder: Path, name: str, part_size: int) -> None:
        if part_size < 1:
            raise ValueError("part_size must be positive")
        self.folder, self.name, self.part_size = folder, name, part_size
        self.parts: list[dict] = []
        self.whole = hashlib.sha256()
        self.size = 0
        self._file = None
        self._hash = None
        self._left = 0

    def writable(self) -> bool:
        return True

    def _next_part(self) -> None:
        self._finish_part()
        name = f"{self.name}.part-{len(self.parts):02d}"
        self._file = (self.folder / name).open("wb")
        self._hash = hashlib.sha256()
        self._left = self.part_size
        self.parts.append({"name": name, "size": 0, "sha256": None})

    def _finish_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self.parts[-1]["sha256"] = self._hash.hexdigest()
            self._file = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        written = 0
        while written < len(view):
            if self._file is None or self._left == 0:
                self._next_part()
            chunk = view[written : written + self._left]
            self._file.write(chunk)
            self._hash.update(chunk)
            self.whole.update(chunk)
            self.parts[-1]["size"] += len(chunk)
            self._left -= len(chunk)
            written += len(chunk)
        self.size += written
        return written

    def close(self) -> None:
        if not self.closed:
            self._finish_part()
        super().close()


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 1_700_000_000
    return info


def write_archive(
    source: Path, folder: Path, stem: str, part_size: int, preset: int = 9, arcname: str = "site"
) -> dict:
    """`source` as `arcname/...` in one .tar.xz stream, `<stem>.tar.xz`, cut into parts
    `<stem>.tar.xz.part-NN` in `folder`. Returns the archive's description for the
    manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{stem}.tar.xz.part-*"):
        old.unlink()
    writer = PartWriter(folder, f"{stem}.tar.xz", part_size)
    unpacked = files = 0
    with lzma.LZMAFile(writer, "w", format=lzma.FORMAT_XZ, preset=preset) as xz:
        with tarfile.open(fileobj=xz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for path in [source, *sorted(source.rglob("*"))]:
                name = arcname if path == source else f"{arcname}/{path.relative_to(source)}"
                info = _reset(tar.gettarinfo(str(path), arcname=name))
                if info.isfile():
                    with path.open("rb") as f:
                        tar.addfile(info, f)
                    unpacked += info.size
                    files += 1
                else:
                    tar.addfile(info)
    writer.close()
    return {
        "name": f"{stem}.tar.xz",
        "size": writer.size,
        "sha256": writer.whole.hexdigest(),
        "xz_preset": preset,
        "unpacked_bytes": unpacked,
        "files": files,
        "root": arcname,
        "part_size": part_size,
        "parts": writer.parts,
    }


class CarryError(RuntimeError):
    """A part is missing or does not match its checksum."""


def verify_parts(archive: dict, folder: Path) -> None:
    """Every part present with its size and sha256, and the whole stream's sha256."""
    whole = hashlib.sha256()
    for part in archive["parts"]:
        path = folder / part["name"]
        if not path.exists():
            raise CarryError(f"missing part {part['name']} in {folder}")
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(MIB), b""):
                digest.update(block)
                whole.update(block)
        if path.stat().st_size != part["size"] or digest.hexdigest() != part["sha256"]:
            raise CarryError(
                f"part {part['name']}: {path.stat().st_size} bytes, sha256 {digest.hexdigest()}; "
                f"the manifest says {part['size']} bytes, {part['sha256']}"
            )
    if whole.hexdigest() != archive["sha256"]:
        raise CarryError(
            f"the joined parts' sha256 is {whole.hexdigest()}, not {archive['sha256']}"
        )


class _Joined(io.RawIOBase):
    """The parts read back to back as one stream."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths: Iterator[Path] = iter(paths)
        self._file = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._file is None:
                path = next(self._paths, None)
                if path is None:
                    return 0
                self._file = path.open("rb")
            n = self._file.readinto(buffer)
            if n:
                return n
            self._file.close()
            self._file = None


def extract_parts(archive: dict, folder: Path, into: Path, verify: bool = True) -> Path:
    """Verify (unless told not to), then unpack the archive under `into`; returns
    `into/<root>`."""
    if verify:
        verify_parts(archive, folder)
    into.mkdir(parents=True, exist_ok=True)
    joined = io.BufferedReader(_Joined([folder / p["name"] for p in archive["parts"]]), MIB)
    with lzma.LZMAFile(joined, "r") as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # Python before 3.11.4: the archive is ours, written by write_archive
            tar.extractall(into)
    return into / archive["root"]


def call_plan(
    parts: list[dict],
    tree_bytes: int,
    fixed: list[dict],
    limit_bytes: int = 64 * MIB,
    max_paths: int = 8,
) -> list[list[str]]:
    """Which parts travel in which `run` call: every call carries the working tree
    (`tree_bytes`) and the `fixed` paths (the manifest), then as many parts, in order, as
    fit under `limit_bytes` and `max_paths`. Raises if one part cannot travel at all."""
    base = tree_bytes + sum(f["size"] for f in fixed)
    calls: list[list[str]] = []
    current: list[str] = []
    used = base
    for part in parts:
        if base + part["size"] > limit_bytes or len(fixed) + 1 > max_paths:
            raise CarryError(
                f"{part['name']} ({part['size'] / MIB:.1f} MiB) cannot travel: the tree and "
                f"the fixed paths take {base / MIB:.1f} of {limit_bytes / MIB:.0f} MiB"
            )
        if current and (
            used + part["size"] > limit_bytes or len(fixed) + len(current) >= max_paths
        ):
            calls.append(current)
            current, used = [], base
        current.append(part["name"])
        used += part["size"]
    if current:
        calls.append(current)
    return calls


def tree_bytes(root: Path) -> int:
    """What a `run` call sends besides `carry`: tracked files and untracked ones git does
    not ignore, and shared/ where the checkout has one."""
    import subprocess

    out = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    total = 0
    for name in out.decode().split("\0"):
        path = root / name
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    shared = root / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file())
    return total


def load_manifest(path: Path) -> dict:
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise CarryError(f"{path} is not an {FORMAT} manifest")
    return manifest


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.gpu.parts verify|unpack MANIFEST PARTS_DIR [INTO]`."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("action", choices=["verify", "unpack"])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("parts_dir", type=Path)
    parser.add_argument("into", type=Path, nargs="?")
    args = parser.parse_args(argv)
    archive = load_manifest(args.manifest)["archive"]
    if args.action == "verify":
        verify_parts(archive, args.parts_dir)
        print(f"{len(archive['parts'])} parts verified ({archive['size'] / MIB:.1f} MiB)")
    else:
        if args.into is None:
            parser.error("unpack needs INTO")
        root = extract_parts(archive, args.parts_dir, args.into)
        print(f"unpacked {archive['files']} files into {root}")


if __name__ == "__main__":
    os.umask(0o022)
    main()
