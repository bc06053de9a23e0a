"""The GPU carry set's parts: one .tar.xz stream cut into parts with checksums, joined and
unpacked back, damage found and named, and the plan of which parts travel in which call.
A tiny synthetic folder; nothing is downloaded."""

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


def test_parts_join_back_to_the_same_files(source: Path, tmp_path: Path) -> None:
    archive = parts.write_archive(source, tmp_path / "out", "carry", part_size=2 * KIB, preset=1)
    names = [p["name"] for p in archive["parts"]]
    assert len(names) >= 4 and names[0] == "carry.tar.xz.part-00"
    assert all(p["size"] == 2 * KIB for p in archive["parts"][:-1])
    assert 0 < archive["parts"][-1]["size"] <= 2 * KIB
    assert sum(p["size"] for p in archive["parts"]) == archive["size"]
    joined = b"".join((tmp_path / "out" / n).read_bytes() for n in names)
    assert hashlib.sha256(joined).hexdigest() == archive["sha256"]
    for part in archive["parts"]:
        data = (tmp_path / "out" / part["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == part["sha256"]
    assert archive["files"] == 4 and archive["unpacked_bytes"] == 9 * KIB + len("VALUE = 1\n")

    root = parts.extract_parts(archive, tmp_path / "out", tmp_path / "unpacked")
    assert root == tmp_path / "unpacked" / "site"
    assert files_of(root) == files_of(source)


def test_archive_is_deterministic(source: Path, tmp_path: Path) -> None:
    first = parts.write_archive(source, tmp_path / "a", "carry", 4 * KIB, preset=1)
    os.utime(source / "tool.so", (1, 1))  # file times do not enter the archive
    second = parts.write_archive(source, tmp_path / "b", "carry", 4 * KIB, preset=1)
    assert first["sha256"] == second["sha256"]
    assert [p["sha256"] for p in first["parts"]] == [p["sha256"] for p in second["parts"]]


def test_a_damaged_or_missing_part_is_named(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    archive = parts.write_archive(source, out, "carry", 2 * KIB, preset=1)
    parts.verify_parts(archive, out)
    second = out / archive["parts"][1]["name"]
    data = bytearray(second.read_bytes())
    data[100] ^= 0xFF
    second.write_bytes(bytes(data))
    with pytest.raises(parts.CarryError, match="part-01"):
        parts.verify_parts(archive, out)
    with pytest.raises(parts.CarryError):
        parts.extract_parts(archive, out, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    second.unlink()
    with pytest.raises(parts.CarryError, match="missing part carry.tar.xz.part-01"):
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


def test_call_plan_fills_each_call_up_to_the_limit() -> None:
    mib = parts.MIB
    names = [{"name": f"p{i}", "size": s * mib} for i, s in enumerate([59, 59, 20, 20, 5])]
    manifest = [{"name": "manifest.json", "size": mib // 16}]
    plan = parts.call_plan(names, tree_bytes=3 * mib, fixed=manifest, limit_bytes=64 * mib)
    assert plan == [["p0"], ["p1"], ["p2", "p3", "p4"]]
    # At most 8 paths a call, the manifest among them.
    small = [{"name": f"s{i}", "size": mib} for i in range(10)]
    plan = parts.call_plan(small, tree_bytes=mib, fixed=manifest, limit_bytes=64 * mib)
    assert [len(call) for call in plan] == [7, 3]
    with pytest.raises(parts.CarryError, match="cannot travel"):
        parts.call_plan(names, tree_bytes=6 * mib, fixed=manifest, limit_bytes=64 * mib)


def test_import_kinds_and_hard_gaps(tmp_path: Path) -> None:
    """The import-closure check: what runs at import is followed, the rest is a soft gap."""
    from benchmarks.gpu import imports

    site = tmp_path / "site"
    (site / "app").mkdir(parents=True)
    (site / "app" / "__init__.py").write_text("from app import core\n")
    (site / "app" / "core.py").write_text(
        "import sys\n"
        "import json, numpy\n"  # stdlib, on the image
        "from . import helpers\n"
        "try:\n    import optional_fast\nexcept ImportError:\n    optional_fast = None\n"
        "if sys.version_info >= (3, 14):\n    import annotationlib\n"
        "if FLAG:\n    import maybe_needed\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import only_for_types\n"
        "def later():\n    import flashinfer, lazy_thing\n"
    )
    (site / "app" / "helpers.py").write_text("import missing_dependency\n")
    (site / "app" / "unused.py").write_text("import never_imported_at_start\n")
    (site / "app" / "_ext.abi3.so").write_bytes(b"")

    found = {
        name: kind
        for name, kind, _, _ in imports.file_imports("app.core", site / "app" / "core.py")
    }
    assert found["optional_fast"] == imports.GUARDED
    assert "annotationlib" not in found  # decided for the image's Python 3.12
    assert found["maybe_needed"] == imports.CONDITIONAL
    assert found["only_for_types"] == imports.TYPING
    assert found["lazy_thing"] == imports.LAZY
    assert found["app.helpers"] == imports.MODULE

    report = imports.closure(site, roots=["app"])
    assert list(report["hard_gaps"]) == ["missing_dependency"]
    assert "app.helpers" in report["hard_gaps"]["missing_dependency"]["where"][0]
    soft = report["soft_gaps"]
    assert {"maybe_needed", "lazy_thing", "only_for_types", "never_imported_at_start"} <= set(soft)
    assert "optional_fast" in soft and "numpy" not in soft and "json" not in soft
    assert "flashinfer" in report["externals"]["excluded"]
    assert "app._ext" in imports.module_index(site)
