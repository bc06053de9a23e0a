"""A folder as one tar stream (optionally xz-compressed) cut into parts of a chosen size,
each with its sha256, and back.

Standard library only, so that the target host can verify and unpack a bundle with
nothing installed (the bundle carries a copy of this file):

    python3 parts.py verify manifest.json .
    python3 parts.py unpack manifest.json . INTO

The archive is deterministic (sorted entries, fixed owner and times): the same folder
gives the same checksums.
"""

import hashlib
import io
import json
import lzma
import tarfile
from collections.abc import Iterator
from pathlib import Path

MIB = 1 << 20
FORMAT = "af3-bundle/1"


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
                self._finish_part()
                name = f"{self.name}.part-{len(self.parts):02d}"
                self._file = (self.folder / name).open("wb")
                self._hash, self._left = hashlib.sha256(), self.part_size
                self.parts.append({"name": name, "size": 0, "sha256": None})
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
    source: Path,
    folder: Path,
    stem: str,
    part_size: int,
    preset: int | None = None,
    arcname: str = "site",
) -> dict:
    """`source` as `arcname/...` in one tar stream, xz-compressed at `preset` (None: not
    compressed: wheels are zip files already), cut into parts `<name>.part-NN` in
    `folder`. Returns the archive's description for the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{stem}.tar" + ("" if preset is None else ".xz")
    for old in folder.glob(f"{name}.part-*"):
        old.unlink()
    writer = PartWriter(folder, name, part_size)
    stream = writer if preset is None else lzma.LZMAFile(writer, "w", preset=preset)
    unpacked = files = 0
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in [source, *sorted(source.rglob("*"))]:
            entry = arcname if path == source else f"{arcname}/{path.relative_to(source)}"
            info = _reset(tar.gettarinfo(str(path), arcname=entry))
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
                unpacked += info.size
                files += 1
            else:
                tar.addfile(info)
    if stream is not writer:
        stream.close()
    writer.close()
    return {
        "name": name,
        "size": writer.size,
        "sha256": writer.whole.hexdigest(),
        "xz_preset": preset,
        "unpacked_bytes": unpacked,
        "files": files,
        "root": arcname,
        "part_size": part_size,
        "parts": writer.parts,
    }


def sha256sums(archive: dict) -> str:
    """The parts' checksums in `sha256sum -c`'s format."""
    return "".join(f"{p['sha256']}  {p['name']}\n" for p in archive["parts"])


class PartsError(RuntimeError):
    """A part is missing or does not match its checksum."""


def verify_parts(archive: dict, folder: Path) -> None:
    """Every part present with its size and sha256, and the whole stream's sha256."""
    whole = hashlib.sha256()
    for part in archive["parts"]:
        path = folder / part["name"]
        if not path.exists():
            raise PartsError(f"missing part {part['name']} in {folder}")
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(MIB), b""):
                digest.update(block)
                whole.update(block)
        if path.stat().st_size != part["size"] or digest.hexdigest() != part["sha256"]:
            raise PartsError(
                f"part {part['name']}: {path.stat().st_size} bytes, sha256 {digest.hexdigest()}; "
                f"the manifest says {part['size']} bytes, {part['sha256']}"
            )
    if whole.hexdigest() != archive["sha256"]:
        raise PartsError(
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


def extract_parts(archive: dict, folder: Path, into: Path) -> Path:
    """Verify, then unpack the archive under `into`; returns `into/<root>`."""
    verify_parts(archive, folder)
    into.mkdir(parents=True, exist_ok=True)
    stream = io.BufferedReader(_Joined([folder / p["name"] for p in archive["parts"]]), MIB)
    if archive["xz_preset"] is not None:
        stream = lzma.LZMAFile(stream, "r")
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # Python before 3.11.4: the archive is ours, written by write_archive
            tar.extractall(into)
    return into / archive["root"]


def load_manifest(path: Path) -> dict:
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise PartsError(f"{path} is not an {FORMAT} manifest")
    return manifest


def main(argv: list[str] | None = None) -> None:
    """`python3 parts.py verify|unpack MANIFEST PARTS_DIR [INTO]`."""
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
    elif args.into is None:
        parser.error("unpack needs INTO")
    else:
        root = extract_parts(archive, args.parts_dir, args.into)
        print(f"unpacked {archive['files']} files into {root}")


if __name__ == "__main__":
    main()
