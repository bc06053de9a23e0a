"""Build the carry set for the lent H200 machine: vLLM 0.32.0 (stripped of what an H200
does not use), every runtime dependency the machine's image lacks, and af3-serve itself,
installed here into one folder (`pip install --no-deps --target`, for CPython 3.12 on
manylinux x86_64), checked for a complete import closure, and written as one .tar.xz
stream cut into parts that each fit one `run` call.

    python -m benchmarks.gpu.carry --out .cache/gpu-carry      # make gpu-carry
    python -m benchmarks.gpu.carry --out .cache/gpu-carry --plan-only

The image's torch 2.11.0+cu130 is used, not carried (see `image.TORCH_ABI_NOTE`).
Writes `manifest.json` (parts and checksums, wheels, what was stripped, excluded and
assumed present, the import-closure report, the `run` call plan) next to the parts.
"""

import argparse
import email.message
import email.parser
import fnmatch
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import parse_wheel_filename
from packaging.version import Version

from benchmarks.gpu import image, imports, parts

ROOT = Path(__file__).resolve().parents[2]
VLLM = "vllm==0.32.0"
STEM = "af3-gpu-carry"
# At most 64 MiB travel per call, the working tree included; the brief's ceiling for a part.
MAX_PART = 60 * parts.MIB
CALL_LIMIT = 64 * parts.MIB
# Room left for the working tree to grow between this build and the device session.
TREE_SLACK = 2 * parts.MIB
SPEECH_SAMPLE = Path(".cache/tests/pyannote-sample.wav")

PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def pip_target_flags() -> list[str]:
    flags = ["--only-binary=:all:", "--python-version", image.PYTHON_VERSION]
    flags += ["--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none"]
    for platform in PLATFORMS:
        flags += ["--platform", platform]
    return flags


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(command[:8]), "..." if len(command) > 8 else "", flush=True)
    subprocess.run(command, check=True)


# Wheels ---------------------------------------------------------------------------------


def wheel_metadata(path: Path) -> email.message.Message:
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.BytesParser().parsebytes(zf.read(name))


def wheels_in(folder: Path) -> dict[str, list[tuple[Version, Path]]]:
    found: dict[str, list[tuple[Version, Path]]] = {}
    for path in folder.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(path.name)
        found.setdefault(image.canonical(name), []).append((version, path))
    return found


def build_own_wheel(folder: Path) -> Path:
    """af3-serve's wheel from this checkout (tracked files and untracked ones git does not
    ignore), built in a copy so that no build/ or egg-info lands in the tree."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    with tempfile.TemporaryDirectory() as tmp:
        for name in filter(None, listing.split("\0")):
            source = ROOT / name
            if source.is_file():
                target = Path(tmp) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        for old in folder.glob("af3_serve-*.whl"):
            old.unlink()
        pip("wheel", "-q", "--no-deps", tmp, "-w", str(folder))
    return next(folder.glob("af3_serve-*.whl"))


def pinned(name: str, spec: SpecifierSet) -> str:
    """`name==V` where this environment (the CPU build the tests run) has a version V that
    `spec` allows, so the device runs what was tested here; else `name<spec>`, the newest."""
    try:
        local = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return f"{name}{spec}"
    return f"{name}=={local}" if spec.contains(local, prereleases=True) else f"{name}{spec}"


def resolve(download: Path, own_wheel: Path) -> dict:
    """The wheels to carry: from vllm and af3-serve, every requirement (markers evaluated
    for the image's Python) that the image lacks and that is not excluded, recursively;
    each downloaded with `pip download --no-deps` at the version installed here when all
    its requirers allow it (`pinned`), else the newest they allow. Returns what was carried,
    excluded and assumed present, with who asked."""
    specs: dict[str, SpecifierSet] = {}
    extras: dict[str, set[str]] = {}
    askers: dict[str, set[str]] = {}
    excluded: dict[str, dict] = {}
    assumed: dict[str, dict] = {}
    processed: set[tuple[str, frozenset]] = set()
    chosen: dict[str, tuple[Version, Path]] = {}
    image_names = {image.canonical(n) for n in image.IMAGE_PACKAGES}

    def require(requirement: Requirement, asker: str) -> None:
        name = image.canonical(requirement.name)
        if name in image.EXCLUDED:
            entry = excluded.setdefault(name, {"reason": image.EXCLUDED[name], "required": {}})
            entry["required"][asker] = str(requirement.specifier) or "any"
            return
        if name in image_names:
            entry = assumed.setdefault(name, {"required": {}})
            entry["required"][asker] = str(requirement.specifier) or "any"
            return
        specs[name] = specs.get(name, SpecifierSet()) & requirement.specifier
        extras.setdefault(name, set()).update(requirement.extras)
        askers.setdefault(name, set()).add(asker)

    require(Requirement(VLLM), "(root)")
    own = wheel_metadata(own_wheel)
    chosen["af3-serve"] = (Version(own["Version"]), own_wheel)
    extras["af3-serve"] = set()
    askers["af3-serve"] = {"(root)"}
    specs["af3-serve"] = SpecifierSet()

    for _ in range(20):
        need = [
            name
            for name, spec in specs.items()
            if name not in chosen or not spec.contains(chosen[name][0], prereleases=True)
        ]
        if need:
            pip(
                "download",
                "-q",
                "--no-deps",
                *pip_target_flags(),
                "-d",
                str(download),
                *(pinned(n, specs[n]) for n in sorted(need)),
            )
            available = wheels_in(download)
            for name in need:
                fits = [
                    (v, p)
                    for v, p in available.get(name, [])
                    if specs[name].contains(v, prereleases=True)
                ]
                if not fits:
                    raise RuntimeError(f"pip downloaded no wheel of {name}{specs[name]}")
                chosen[name] = max(fits)
        pending = [
            (name, frozenset(extras.get(name, ())))
            for name in chosen
            if (name, frozenset(extras.get(name, ()))) not in processed
        ]
        if not pending and not need:
            break
        for name, wanted in pending:
            processed.add((name, wanted))
            metadata = wheel_metadata(chosen[name][1])
            for line in metadata.get_all("Requires-Dist") or []:
                requirement = Requirement(line)
                environments = [image.marker_environment(e) for e in ["", *sorted(wanted)]]
                if requirement.marker is None or any(
                    requirement.marker.evaluate(env) for env in environments
                ):
                    require(requirement, f"{name} {chosen[name][0]}")
    else:
        raise RuntimeError("dependency resolution did not settle in 20 rounds")

    for name, entry in assumed.items():
        known = image.IMAGE_VERSIONS.get(name)
        entry["image_version"] = known
        if known is None:
            entry["satisfied"] = None
        else:
            entry["satisfied"] = all(
                SpecifierSet("" if s == "any" else s).contains(known, prereleases=True)
                for s in entry["required"].values()
            )
    return {
        "wheels": {
            name: {
                "version": str(version),
                "file": path.name,
                "bytes": path.stat().st_size,
                "required_by": sorted(askers.get(name, ())),
                "extras": sorted(extras.get(name, ())),
            }
            for name, (version, path) in sorted(chosen.items())
        },
        "paths": [path for _, path in chosen.values()],
        "excluded": dict(sorted(excluded.items())),
        "assumed_on_image": dict(sorted(assumed.items())),
    }


# The site folder ------------------------------------------------------------------------


def install_site(wheels: list[Path], site: Path) -> None:
    """The rehearsal of the device install: every carried wheel into one folder, as the
    image's Python 3.12 would have it."""
    if site.exists():
        shutil.rmtree(site)
    pip(
        "install",
        "-q",
        "--no-deps",
        "--no-index",
        "--no-compile",
        "--no-warn-script-location",
        *pip_target_flags(),
        "--target",
        str(site),
        *map(str, wheels),
    )
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts name this machine's Python


def strip_vllm(site: Path, patterns: list[str]) -> list[dict]:
    """Remove `patterns` (`image.STRIP_FROM_VLLM`) from the installed vllm, each checked to
    match something first."""
    removed = []
    for pattern in patterns:
        folder = site / Path(pattern).parent
        matches = [p for p in folder.iterdir() if fnmatch.fnmatch(p.name, Path(pattern).name)]
        if not matches:
            raise RuntimeError(f"{pattern} is not in the vllm wheel: update image.STRIP_FROM_VLLM")
        for path in matches:
            size = (
                sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                if path.is_dir()
                else path.stat().st_size
            )
            removed.append({"path": str(path.relative_to(site)), "bytes": size})
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# The plan ---------------------------------------------------------------------------------


RUN_COMMAND = "bash benchmarks/gpu/run_h200.sh"


def plan_calls(manifest: dict, manifest_path: Path, out: Path) -> dict:
    """Which parts travel in which `run` call, from the working tree's size now. Every call
    carries the manifest; the speech sample rides along where it fits (the last parts call)
    and in every later call, which carries nothing else."""
    tree = parts.tree_bytes(ROOT)
    manifest_rel = str(manifest_path.relative_to(ROOT))
    fixed = [{"name": manifest_rel, "size": max(manifest_path.stat().st_size, 64 * 1024)}]
    calls = parts.call_plan(manifest["archive"]["parts"], tree, fixed, CALL_LIMIT)
    rel = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    sizes = {p["name"]: p["size"] for p in manifest["archive"]["parts"]}
    speech = ROOT / SPEECH_SAMPLE
    speech_size = speech.stat().st_size if speech.exists() else 1_000_000
    planned = []
    for i, call in enumerate(calls):
        carry = [manifest_rel, *(f"{rel}/{name}" for name in call)]
        used = tree + fixed[0]["size"] + sum(sizes[n] for n in call)
        if i == len(calls) - 1 and used + speech_size <= CALL_LIMIT and len(carry) < 8:
            carry.append(str(SPEECH_SAMPLE))
            used += speech_size
        planned.append({"command": RUN_COMMAND, "carry": carry, "timeout_s": 600, "bytes": used})
    planned.append(
        {
            "command": RUN_COMMAND,
            "carry": [manifest_rel, str(SPEECH_SAMPLE)],
            "timeout_s": 600,
            "bytes": tree + fixed[0]["size"] + speech_size,
            "repeat": "until it prints ALL DONE",
        }
    )
    return {
        "tree_bytes": tree,
        "call_limit_bytes": CALL_LIMIT,
        "speech_sample_present": speech.exists(),
        "calls": planned,
    }


def print_plan(manifest: dict) -> None:
    archive = manifest["archive"]
    plan = manifest["plan"]
    print(
        f"carry set: {archive['size'] / parts.MIB:.1f} MiB in {len(archive['parts'])} parts "
        f"of at most {archive['part_size'] / parts.MIB:.0f} MiB "
        f"({archive['unpacked_bytes'] / parts.MIB:.0f} MiB unpacked, {archive['files']} files); "
        f"working tree {plan['tree_bytes'] / parts.MIB:.1f} MiB"
    )
    if not plan["speech_sample_present"]:
        print(f"  ({SPEECH_SAMPLE} is missing: run `make test` or harness.speech_sample() first)")
    for i, call in enumerate(plan["calls"], 1):
        again = f" -- {call['repeat']}" if call.get("repeat") else ""
        print(
            f"  run call {i}: command={call['command']!r} timeout_s={call['timeout_s']} "
            f"carry={json.dumps(call['carry'])} ({call['bytes'] / parts.MIB:.1f} MiB){again}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "gpu-carry")
    parser.add_argument(
        "--download", type=Path, help="wheel folder (default: OUT/../gpu-carry-wheels)"
    )
    parser.add_argument("--xz-preset", type=int, default=9)
    parser.add_argument(
        "--part-mib",
        type=int,
        help="part size (default: what one call carries next to the working tree, at most 60)",
    )
    parser.add_argument("--plan-only", action="store_true", help="re-plan an existing carry set")
    parser.add_argument(
        "--keep-moe", action="store_true", help="keep vLLM's fused-MoE extension (36 MiB more)"
    )
    args = parser.parse_args()
    out = args.out.resolve()
    manifest_path = out / "manifest.json"

    if args.plan_only:
        manifest = parts.load_manifest(manifest_path)
        manifest["plan"] = plan_calls(manifest, manifest_path, out)
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
        print_plan(manifest)
        return

    started = time.monotonic()
    download = (args.download or out.parent / "gpu-carry-wheels").resolve()
    download.mkdir(parents=True, exist_ok=True)
    own_wheel = build_own_wheel(download)
    resolved = resolve(download, own_wheel)
    print(
        f"{len(resolved['paths'])} wheels, "
        f"{sum(p.stat().st_size for p in resolved['paths']) / parts.MIB:.0f} MiB"
    )

    site = out.parent / "gpu-carry-site"
    install_site(resolved["paths"], site)
    patterns = [p for p in image.STRIP_FROM_VLLM if not (args.keep_moe and "_moe_C" in p)]
    stripped = strip_vllm(site, patterns)
    report = imports.closure(site)
    (out.parent / "gpu-carry-imports.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\n".join(imports.summary_lines(report)))
    if report["hard_gaps"] or report["hard_missing_internal"] or report["entry_modules_missing"]:
        print("WARNING: the import closure has hard gaps (see above); building anyway")

    if args.part_mib:
        part_size = args.part_mib * parts.MIB
    else:
        room = CALL_LIMIT - parts.tree_bytes(ROOT) - TREE_SLACK - 64 * 1024
        part_size = min(MAX_PART, room // parts.MIB * parts.MIB)
    print(
        f"writing the archive (xz preset {args.xz_preset}, "
        f"parts of {part_size / parts.MIB:.0f} MiB)",
        flush=True,
    )
    for old in out.glob("*.part-*"):
        old.unlink()
    archive = parts.write_archive(site, out, STEM, part_size, args.xz_preset)
    manifest = {
        "format": parts.FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "-m", "benchmarks.gpu.carry", *sys.argv[1:]]),
        "target": f"CPython {image.PYTHON_FULL_VERSION}, manylinux x86_64 (the lent H200 image)",
        "archive": archive,
        "install": "unpack: the archive's site/ folder goes first on PYTHONPATH (it is what "
        "`pip install --no-deps --no-index --target site` of the wheels below gives)",
        "wheels": resolved["wheels"],
        "stripped_from_vllm": stripped,
        "stripped_bytes": sum(s["bytes"] for s in stripped),
        "excluded": resolved["excluded"],
        "assumed_on_image": resolved["assumed_on_image"],
        "torch": {
            "carried": False,
            "image": "2.11.0+cu130",
            "vllm_requires": next(
                (v["required"] for k, v in resolved["excluded"].items() if k == "torch"), None
            ),
            "why": image.TORCH_ABI_NOTE,
        },
        "import_closure": {
            k: report[k]
            for k in ("hard_gaps", "hard_missing_internal", "entry_modules_missing", "soft_gaps")
        },
        "import_closure_report": "../gpu-carry-imports.json",
        "build_seconds": round(time.monotonic() - started),
    }
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    manifest["plan"] = plan_calls(manifest, manifest_path, out)
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    print_plan(manifest)


if __name__ == "__main__":
    main()
