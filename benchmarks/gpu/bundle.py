"""An offline bundle of af3-serve for an air-gapped GPU host.

Resolves `af3-serve[gpu]` (vLLM 0.32.0 and everything it needs) with pip's own resolver
for a named target Python and platform, downloads those wheels with their sha256 checked,
and writes them, with af3-serve's own wheel, a copy of this checkout (the comparison runs
from it) and the speech sample where it is here, as one tar stream cut into parts of a
chosen size, with `manifest.json`, `SHA256SUMS` and `parts.py` (standard library only)
beside them.

`--host-torch` leaves out torch, torchvision, torchaudio, torchcodec, triton and everything
torch itself requires (its CUDA libraries, ...), for a host whose own torch brought those:
vLLM 0.32's compiled extensions link only against PyTorch's stable C ABI, so they load on
another torch release that exports it (2.11 does), although vLLM's metadata pins 2.13.

    python -m benchmarks.gpu.bundle --out DIR [--python 3.12] \
        [--platform manylinux_2_35_x86_64] [--host-torch] [--part-mib 1024] [--xz-preset 6]

On the host (PYTHON: the one that will serve):

    python3 parts.py unpack manifest.json . /opt    # checks every part and the whole
    cd /opt/af3-bundle && PYTHON=python3 sh install.sh
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import parse_wheel_filename

from benchmarks import harness
from benchmarks.gpu import parts

ROOT = Path(__file__).resolve().parents[2]
STEM = "af3-bundle"
# Built against one torch release each; a host's own torch brings its own.
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "torchcodec", "triton"}
INSTALL_SH = """#!/bin/sh
# af3-serve from this bundle's wheels, offline, each checked against its sha256.
set -e
cd "$(dirname "$0")"
"${PYTHON:-python3}" -m pip install --no-index --no-deps --require-hashes \\
    --find-links wheels -r requirements.txt
"""


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def target_flags(python: str, platform: str) -> list[str]:
    """pip's flags for wheels of CPython `python` on `platform`; a manylinux_2_N platform
    also accepts the older glibc tags (pip itself does not widen these)."""
    flags = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    flags += ["--abi", "cp" + python.replace(".", ""), "--abi", "abi3", "--abi", "none"]
    platforms = [platform]
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if match:
        glibc, arch = int(match[1]), match[2]
        platforms = [f"manylinux_2_{n}_{arch}" for n in range(glibc, 16, -1)]
        platforms += [f"manylinux2014_{arch}", f"manylinux1_{arch}"]
    for name in platforms:
        flags += ["--platform", name]
    return flags


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def checkout_files() -> list[str]:
    """Tracked files and untracked ones git does not ignore."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listing.split("\0") if name and (ROOT / name).is_file()]


def copy_checkout(into: Path) -> None:
    for name in checkout_files():
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def build_own_wheel(folder: Path) -> Path:
    """af3-serve's wheel, built from a copy of the checkout (no build/ lands in the tree)."""
    for old in folder.glob("af3_serve-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        copy_checkout(Path(tmp))
        pip("wheel", "-q", "--no-deps", tmp, "-w", str(folder))
    return next(folder.glob("af3_serve-*.whl"))


def resolve(requirement: str, flags: list[str]) -> list[dict]:
    """pip's resolution of `requirement` for the target (`--dry-run --report`: metadata
    only, nothing downloaded): its `install` items."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        install = ["install", "-q", "--dry-run", "--ignore-installed", "--report", str(report)]
        pip(*install, *flags, requirement)
        return json.loads(report.read_text())["install"]


def select(items: list[dict], left_out: set[str]) -> dict[str, dict]:
    """The wheels to bundle, by name, each with who requires it: what af3-serve reaches in
    pip's resolution without passing through `left_out` (a requirement counts whatever
    its marker says: pip has already decided which apply to the target)."""
    by_name = {canonical(i["metadata"]["name"]): i for i in items}
    required_by: dict[str, set[str]] = {"af3-serve": set()}
    queue = ["af3-serve"]
    while queue:
        name = queue.pop()
        for line in by_name[name]["metadata"].get("requires_dist") or []:
            wanted = canonical(Requirement(line).name)
            if wanted in by_name and wanted not in left_out:
                if wanted not in required_by:
                    queue.append(wanted)
                required_by.setdefault(wanted, set()).add(name)
    return {
        name: {
            "name": name,
            "version": by_name[name]["metadata"]["version"],
            "sha256": by_name[name]["download_info"]["archive_info"]["hashes"].get("sha256"),
            "required_by": sorted(askers),
        }
        for name, askers in sorted(required_by.items())
    }


def host_torch_left_out(items: list[dict], flags: list[str]) -> set[str]:
    """For a host with its own torch: the torch family and everything torch itself requires
    (its CUDA libraries, sympy, ...), which the host's torch brought."""
    torch = next(i for i in items if canonical(i["metadata"]["name"]) == "torch")
    brought = resolve(f"torch=={torch['metadata']['version']}", flags)
    return TORCH_FAMILY | {canonical(i["metadata"]["name"]) for i in brought}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(parts.MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def download(wheels: dict[str, dict], own_wheel: Path, folder: Path, flags: list[str]) -> None:
    """Each selected wheel into `folder` (pip skips those already there), its sha256 checked
    against the index's; fills in each entry's `file` and `bytes`."""
    pins = [f"{w['name']}=={w['version']}" for w in wheels.values() if w["name"] != "af3-serve"]
    pip("download", "-q", "--no-deps", *flags, "-d", str(folder), *pins)
    files = {}
    for path in folder.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(path.name)
        files[(canonical(name), str(version))] = path
    wheels["af3-serve"]["sha256"] = sha256_of(own_wheel)
    files[("af3-serve", wheels["af3-serve"]["version"])] = own_wheel
    for wheel in wheels.values():
        path = files[(wheel["name"], wheel["version"])]
        digest = sha256_of(path)
        if wheel["sha256"] not in (None, digest):
            raise parts.PartsError(
                f"{path.name}: sha256 {digest}, the index says {wheel['sha256']}"
            )
        wheel |= {"file": path.name, "sha256": digest, "bytes": path.stat().st_size}


def stage(wheels: dict[str, dict], sources: dict[str, Path], folder: Path) -> None:
    """The bundle's tree: wheels/, requirements.txt (each pinned with its hash),
    install.sh and source/ (this checkout, with the speech sample where it is here)."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "wheels").mkdir(parents=True)
    for wheel in wheels.values():
        target = folder / "wheels" / wheel["file"]
        try:  # no second copy of gigabytes where the cache is on the same disk
            os.link(sources[wheel["file"]], target)
        except OSError:
            shutil.copy2(sources[wheel["file"]], target)
    (folder / "requirements.txt").write_text(
        "".join(
            f"{w['name']}=={w['version']} --hash=sha256:{w['sha256']}\n" for w in wheels.values()
        )
    )
    (folder / "install.sh").write_text(INSTALL_SH)
    (folder / "install.sh").chmod(0o755)
    copy_checkout(folder / "source")
    if harness.SPEECH_WAV.exists():
        target = folder / "source" / harness.SPEECH_WAV.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(harness.SPEECH_WAV, target)


def main() -> None:
    parser = harness.script_parser(__doc__, "where the parts go")
    parser.add_argument("--python", default="3.12", help="target CPython (default %(default)s)")
    parser.add_argument(
        "--platform",
        default="manylinux_2_35_x86_64",
        help="target wheel tag (glibc 2.35: Ubuntu 22.04)",
    )
    parser.add_argument("--host-torch", action="store_true", help="use the host's own torch")
    parser.add_argument("--part-mib", type=int, default=1024, help="part size (default 1024)")
    parser.add_argument("--xz-preset", type=int, help="compress with xz (default: plain tar)")
    parser.add_argument("--download", type=Path, help="wheel cache (default OUT-wheels)")
    args = parser.parse_args()
    started = time.monotonic()
    out = args.out.resolve()
    cache = (args.download or out.parent / f"{out.name}-wheels").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    flags = target_flags(args.python, args.platform)

    own = build_own_wheel(cache)
    items = resolve(f"{own}[gpu]", flags)
    left_out = host_torch_left_out(items, flags) if args.host_torch else set()
    wheels = select(items, left_out)
    download(wheels, own, cache, flags)
    print(f"{len(wheels)} wheels, {sum(w['bytes'] for w in wheels.values()) / parts.MIB:.0f} MiB")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tree = Path(tmp) / STEM
        stage(wheels, {p.name: p for p in cache.glob("*.whl")}, tree)
        archive = parts.write_archive(
            tree, out, STEM, args.part_mib * parts.MIB, args.xz_preset, arcname=STEM
        )
    manifest = {
        "format": parts.FORMAT,
        "command": harness.command_line(),
        "target": {"python": args.python, "platform": args.platform},
        "host_torch": args.host_torch,
        "left_out": sorted(left_out),
        "install": "python3 parts.py unpack manifest.json . DIR; sh DIR/af3-bundle/install.sh",
        "archive": archive,
        "wheels": wheels,
        "build_s": round(time.monotonic() - started),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "SHA256SUMS").write_text(parts.sha256sums(archive))
    shutil.copy2(Path(parts.__file__), out / "parts.py")
    print(
        f"{out}: {archive['size'] / parts.MIB:.0f} MiB in {len(archive['parts'])} parts, "
        f"manifest.json, SHA256SUMS, parts.py"
    )


if __name__ == "__main__":
    main()
