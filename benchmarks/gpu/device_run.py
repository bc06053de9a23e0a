"""The GPU proof run on the lent H200 (issue 14), in steps that survive between calls.

Each call runs the steps still to do, in order, while its deadline allows (a step starts
only if its estimate fits), and writes every result so far to $OUT, so the same command
is simply repeated until it prints ALL DONE (PLAN.md). State, the unpacked carry set, the
checkpoint and detached servers live in --work, which stays while the machine is warm;
servers are started in their own session, so one started in one call serves the next.

Steps: stash (the carried parts, kept outside the tree) -> install (verify, unpack, our
own checkout on top) -> env (CUDA extensions on torch 2.11, versions, the bf16 8192^3
matmul rate) -> checkpoint (full-size random AF3, bf16) -> embeddings (ours vs
transformers) -> per server (af3-serve bf16, `vllm serve` built-in bf16, af3-serve fp8):
start, correctness (first-token logprobs, greedy continuations), three workloads, stop ->
report (comparisons, MFU, targets, plot).

`--cpu` is the dry run on this machine: the same steps on the CPU build in .venv with the
`bench` checkpoint and tiny workloads; the install step unpacks the real GPU parts into a
scratch folder without using them; what needs CUDA is skipped and says so.

    bash benchmarks/gpu/run_h200.sh            # on the device, repeated until ALL DONE
    bash benchmarks/gpu/run_h200.sh --cpu      # the dry run here
"""

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.gpu import parts

ROOT = Path(__file__).resolve().parents[2]
CARRY = ROOT / ".cache" / "gpu-carry"
MODEL = "audio-flamingo-3"
UPSTREAM_ENV = {"VLLM_PLUGINS": "none-of-ours"}  # benchmarks.harness.UPSTREAM_ENV
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}
CORRECTNESS_SECONDS = [3.3, 47.5, 600.0]
TWO_AUDIOS = [47.5, 3.3]
GREEDY_TOKENS = 32
QUESTION = "What is said in the audio?"

# First-token logprobs, ours against the built-in, same weights, both bf16 (justification):
# the logits are z = W h with W's rows N(0, 0.02^2) (the checkpoint's init range) and h the
# final RMS-normed hidden state (unit RMS), so z has a spread of 0.02 * sqrt(3584) = 1.2
# nats. Two bf16 implementations round every stored activation to 8 significant bits
# (unit roundoff 2^-8 = 0.004) through 60 residual blocks (32 encoder, 28 decoder) with
# different kernels (varlen FlashAttention on valid positions against padded windows,
# fused against unfused projections); their final hidden states typically differ by 1-3%
# relative, which moves a logit by about 0.02-0.04 nats (random-signed, so not more than
# the relative error times the logit spread) and the log-partition by less. The largest
# of the top-5 differences is then ~0.1 nats. A real defect (audio features misplaced,
# a wrong window, a wrong mask) moves logits by their whole spread, ~1 nat. 0.25 nats
# sits between: 2.5x the expected noise, a quarter of a defect. Also required: each
# side's top token is among the other's top 5.
LOGPROB_TOLERANCE = 0.25
LOGPROB_TOP = 5

GPU_WORKLOADS = {  # name: (audio seconds, requests, concurrency)
    "600s": (600.0, 32, 16),
    "30s": (30.0, 256, 64),
    "5s": (5.0, 512, 128),
}
CPU_WORKLOADS = {"600s": (600.0, 2, 2), "30s": (30.0, 4, 2), "5s": (5.0, 6, 3)}
MAX_TOKENS = 32

SERVERS = {
    # name: (which server, extra flags on the GPU, extra flags on the CPU dry run)
    "ours_bf16": ("af3-serve", ["--dtype", "bfloat16"], ["--dtype", "float32"]),
    "builtin_bf16": ("vllm-serve", ["--dtype", "bfloat16"], ["--dtype", "float32"]),
    # fp8 weights are a CUDA path; the dry run exercises the step with bf16's flags.
    "ours_fp8": (
        "af3-serve",
        ["--dtype", "bfloat16", "--quantization", "fp8"],
        ["--dtype", "float32"],
    ),
}
# If `vllm serve` refuses AF3's 10-min prompt at vLLM's default settings, the comparison is
# still made, at af3-serve's defaults for long audio (the CPU comparisons' settings), and
# the result says so.
FALLBACK_FLAGS = {"builtin_bf16": ["--max-num-batched-tokens", "16384", "--max-model-len", "32768"]}
CPU_SERVER_FLAGS = [
    "--enforce-eager",
    "--max-model-len",
    "32768",
    "--max-num-batched-tokens",
    "16384",
]

# Estimated seconds per step on the H200 (a step starts only if it fits the deadline).
ESTIMATES = {
    "stash": 10,
    "install": 60,
    "own": 20,
    "env": 60,
    "checkpoint": 120,
    "embeddings": 150,
    "start": 240,
    "correctness": 60,
    "bench:600s": 120,
    "bench:30s": 90,
    "bench:5s": 90,
    "stop": 30,
    "report": 15,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# State -----------------------------------------------------------------------------------


@dataclass
class Context:
    cpu: bool
    work: Path
    out: Path
    carry: Path
    deadline: float
    python: str
    env: dict[str, str]

    @property
    def results_dir(self) -> Path:
        return self.work / "results"

    def state_path(self) -> Path:
        return self.work / "state.json"

    def load_state(self) -> dict:
        path = self.state_path()
        return json.loads(path.read_text()) if path.exists() else {"steps": {}, "servers": {}}

    def save_state(self, state: dict) -> None:
        self.state_path().write_text(json.dumps(state, indent=1) + "\n")

    def result(self, name: str, value: dict | None = None) -> dict | None:
        path = self.results_dir / f"{name}.json"
        if value is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value, indent=1) + "\n")
            return value
        return json.loads(path.read_text()) if path.exists() else None

    def run(self, *args: str, timeout: float | None = None, env: dict | None = None, **kw):
        """A Python module or script of this checkout, in the run's environment."""
        command = [self.python, *args]
        shown = " ".join(a if "\n" not in a else "<code>" for a in command)
        log("+ " + shown[:300])
        return subprocess.run(
            command, cwd=ROOT, env={**self.env, **(env or {})}, timeout=timeout, **kw
        )

    @property
    def checkpoint(self) -> Path:
        return self.work / ("ckpt-bench" if self.cpu else "ckpt-real")


# Steps -------------------------------------------------------------------------------------


def step_stash(ctx: Context) -> dict:
    """Copy the parts this call carried out of the tree (the next call may not carry them),
    each checked against the manifest; report which are still missing."""
    stash = ctx.work / "parts"
    stash.mkdir(parents=True, exist_ok=True)
    carried = ctx.carry / "manifest.json"
    if carried.exists():  # a new carry set replaces what an earlier call stashed
        manifest = parts.load_manifest(carried)
        kept = stash / "manifest.json"
        if (
            kept.exists()
            and parts.load_manifest(kept)["archive"]["sha256"] != manifest["archive"]["sha256"]
        ):
            for old in stash.glob("*.part-*"):
                old.unlink()
        shutil.copy2(carried, kept)
    else:  # this call did not carry it: the one an earlier call stashed
        manifest = parts.load_manifest(stash / "manifest.json")
    archive = manifest["archive"]
    present, missing = [], []
    for part in archive["parts"]:
        target = stash / part["name"]
        source = ctx.carry / part["name"]
        if not target.exists() and source.exists():
            shutil.copy2(source, target)
        if target.exists() and target.stat().st_size == part["size"]:
            present.append(part["name"])
        else:
            target.unlink(missing_ok=True)
            missing.append(part["name"])
    log(f"parts present: {present}; missing: {missing}")
    return {"present": present, "missing": missing, "archive_sha256": archive["sha256"]}


def step_install(ctx: Context) -> dict:
    """Verify and unpack the carry set (each part's and the whole stream's sha256). On the
    CPU dry run: into a scratch folder, used by nothing."""
    stash = ctx.work / "parts"
    manifest = parts.load_manifest(stash / "manifest.json")
    archive = manifest["archive"]
    site = ctx.work / ("site-rehearsal" if ctx.cpu else "site")
    marker = site / ".complete"
    started = time.monotonic()
    if marker.exists() and marker.read_text().strip() == archive["sha256"]:
        log(f"{site} already holds archive {archive['sha256'][:12]}")
    else:
        shutil.rmtree(site, ignore_errors=True)
        root = parts.extract_parts(archive, stash, site.parent / "unpack-tmp")
        root.rename(site)
        shutil.rmtree(site.parent / "unpack-tmp", ignore_errors=True)
        marker.write_text(archive["sha256"] + "\n")
    return {
        "site": str(site),
        "archive_sha256": archive["sha256"],
        "unpack_s": round(time.monotonic() - started, 1),
        "files": archive["files"],
        "unpacked_bytes": archive["unpacked_bytes"],
        "used_by_this_run": not ctx.cpu,
    }


def step_own(ctx: Context) -> dict:
    """af3-serve from the checkout that travelled with this call, installed in front of
    the carried wheel, so that what runs is this call's code (fixes made after the carry
    set was built included); if it does not install, the carried wheel serves. Runs in
    every call."""
    own = ctx.work / ("own-rehearsal" if ctx.cpu else "own")
    shutil.rmtree(own, ignore_errors=True)
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = ctx.work / "af3-serve-src"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".cache", ".venv", "build", "*.egg-info", "__pycache__"
        ),
    )
    build = subprocess.run(
        [
            ctx.python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--no-compile",
            "--target",
            str(own),
            str(source),
        ],
        cwd=ctx.work,
        capture_output=True,
        text=True,
    )
    shutil.rmtree(source, ignore_errors=True)
    installed = build.returncode == 0 and (own / "af3_serve").is_dir()
    if not installed:
        shutil.rmtree(own, ignore_errors=True)
        log(
            "af3-serve from the checkout did not install; the carried wheel serves:\n"
            + build.stderr[-2000:]
        )
    manifest = parts.load_manifest(ctx.work / "parts" / "manifest.json")
    return {
        "own_checkout_installed": installed,
        "error": None if installed else build.stderr[-3000:],
        "carried_af3_serve_wheel": manifest["wheels"].get("af3-serve", {}).get("file"),
        "used_by_this_run": installed and not ctx.cpu,
    }


def python_path(ctx: Context) -> str | None:
    if ctx.cpu:
        return None
    paths = [ctx.work / "own", ctx.work / "site"]
    return os.pathsep.join(str(p) for p in paths if p.is_dir())


ENV_PROBE = r"""
import importlib, importlib.metadata as md, json, sys, time
out = {"python": sys.version.split()[0]}
import torch
out["torch"] = torch.__version__
out["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    out["device"] = torch.cuda.get_device_name()
    out["capability"] = list(torch.cuda.get_device_capability())
exts = {}
for name in ["vllm._C_stable_libtorch", "vllm.vllm_flash_attn._vllm_fa3_C", "vllm.cumem_allocator",
             "vllm._moe_C_stable_libtorch", "vllm._C"]:
    try:
        importlib.import_module(name); exts[name] = "ok"
    except Exception as e:
        exts[name] = f"{type(e).__name__}: {e}"[:300]
out["extensions"] = exts
mods = {}
for name in ["vllm.entrypoints.openai.api_server", "af3_serve.cli",
             "af3_model_executor.audioflamingo3", "af3_bench.cli",
             "vllm.model_executor.models.audioflamingo3"]:
    t = time.monotonic()
    try:
        importlib.import_module(name); mods[name] = f"ok {time.monotonic() - t:.1f}s"
    except Exception as e:
        mods[name] = f"{type(e).__name__}: {e}"[:500]
out["imports"] = mods
import vllm
out["vllm"] = vllm.__version__
out["vllm_file"] = vllm.__file__
eps = [e.value for e in md.entry_points(group="vllm.general_plugins")]
out["vllm_plugins"] = eps
spec = json.loads(sys.argv[1])
versions = {}
from packaging.specifiers import SpecifierSet
for name, entry in spec.items():
    try:
        v = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = {"installed": None, "ok": False}
        continue
    ok = all(SpecifierSet("" if s == "any" else s).contains(v, prereleases=True)
             for s in entry["required"].values())
    versions[name] = {"installed": v, "ok": ok, "required": entry["required"]}
out["assumed_on_image"] = versions
print("PROBE " + json.dumps(out))
"""

KERNEL_PROBE = r"""
import json, torch
out = {}
from vllm.vllm_flash_attn import flash_attn_varlen_func, fa_version_unsupported_reason
out["fa_unsupported_reason"] = {v: fa_version_unsupported_reason(v) for v in (2, 3, 4)}
torch.manual_seed(0)
lens = [1500, 700, 3]
cu = torch.tensor([0, 1500, 2200, 2203], dtype=torch.int32, device="cuda")
q, k, v = (torch.randn(2203, 20, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
o = flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=1500,
                           max_seqlen_k=1500, causal=False, fa_version=3)
ref = []
for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
    qq, kk, vv = (t[a:b].transpose(0, 1).float() for t in (q, k, v))
    ref.append(torch.nn.functional.scaled_dot_product_attention(qq, kk, vv).transpose(0, 1))
ref = torch.cat(ref)
out["fa3_varlen_rel_err"] = float((o.float() - ref).norm() / ref.norm())
from vllm import _custom_ops as ops
x = torch.randn(64, 3584, device="cuda", dtype=torch.bfloat16)
w = torch.randn(3584, device="cuda", dtype=torch.bfloat16)
y = torch.empty_like(x)
ops.rms_norm(y, x, w, 1e-6)
xf = x.float()
ref = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()
out["rms_norm_rel_err"] = float((y.float() - ref).norm() / ref.norm())
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    a @ b
torch.cuda.synchronize()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
times = []
for _ in range(10):
    start.record(); a @ b; end.record(); torch.cuda.synchronize()
    times.append(start.elapsed_time(end) / 1000)
times.sort()
out["matmul_8192_bf16_tflops"] = 2 * 8192**3 / times[len(times) // 2] / 1e12
print("PROBE " + json.dumps(out))
"""

CPU_MATMUL_PROBE = r"""
import json, time, torch
a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
a @ b
t = []
for _ in range(5):
    s = time.perf_counter(); a @ b; t.append(time.perf_counter() - s)
t.sort()
print("PROBE " + json.dumps({"matmul_1024_fp32_tflops": 2 * 1024**3 / t[2] / 1e12}))
"""


def probe(ctx: Context, code: str, *args: str, timeout: float = 300) -> dict:
    done = ctx.run("-c", code, *args, timeout=timeout, capture_output=True, text=True)
    line = next((s for s in done.stdout.splitlines() if s.startswith("PROBE ")), None)
    if line is None:
        raise RuntimeError(f"probe failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(line.removeprefix("PROBE "))


def step_env(ctx: Context) -> dict:
    manifest = parts.load_manifest(ctx.work / "parts" / "manifest.json")
    result = probe(ctx, ENV_PROBE, json.dumps(manifest["assumed_on_image"]))
    bad = {k: v for k, v in result["assumed_on_image"].items() if not v["ok"]}
    result["assumed_mismatches"] = bad
    result["nvidia_smi"] = _command_output(["nvidia-smi", "-L"])
    result["disk"] = _command_output(["df", "-h", str(ctx.work)])
    failed = {k: v for k, v in result["imports"].items() if not v.startswith("ok")}
    if failed:
        raise RuntimeError(f"imports failed: {json.dumps(failed, indent=1)}")
    if ctx.cpu:
        result |= probe(ctx, CPU_MATMUL_PROBE)
        result["matmul_tflops"] = result["matmul_1024_fp32_tflops"]
    else:
        if result["extensions"]["vllm._C_stable_libtorch"] != "ok":
            raise RuntimeError(f"vLLM's CUDA extension does not load: {result['extensions']}")
        result |= probe(ctx, KERNEL_PROBE)
        result["matmul_tflops"] = result["matmul_8192_bf16_tflops"]
    log(
        "env: "
        + json.dumps({k: result.get(k) for k in ("torch", "vllm", "device", "matmul_tflops")})
    )
    return result


def _command_output(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def step_checkpoint(ctx: Context) -> dict:
    marker = ctx.checkpoint / "AF3_TINY_CHECKPOINT.json"
    if marker.exists():
        return json.loads(marker.read_text()) | {"reused": True}
    args = ["-m", "benchmarks.gpu.checkpoint", str(ctx.checkpoint)]
    if ctx.cpu:
        args += [
            "--preset",
            "bench",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--shard-gib",
            "0.01",
        ]
    else:
        args += ["--preset", "real", "--device", "cuda", "--dtype", "bfloat16"]
    ctx.run(*args, check=True, timeout=900)
    result = json.loads(marker.read_text())
    if ctx.cpu:  # the real preset's shapes and names, on the meta device
        meta = ctx.run(
            *["-m", "benchmarks.gpu.checkpoint", str(ctx.work / "ckpt-real-meta")],
            *["--preset", "real", "--device", "meta"],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        result["real_preset_on_meta"] = json.loads(meta.stdout[meta.stdout.index("{") :])
    return result


def step_embeddings(ctx: Context) -> dict:
    out = ctx.results_dir / "embeddings.raw.json"
    device, dtype = ("cpu", "float32") if ctx.cpu else ("cuda", "bfloat16")
    seconds = [str(s) for s in CORRECTNESS_SECONDS]
    ctx.run(
        "-m",
        "benchmarks.gpu.embeddings",
        str(ctx.checkpoint),
        "--device",
        device,
        "--dtype",
        dtype,
        "--seconds",
        *seconds,
        "--out",
        str(out),
        check=True,
        timeout=900,
    )
    return json.loads(out.read_text())


# Servers -----------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(ctx: Context, name: str, port: int) -> tuple[list[str], dict[str, str]]:
    kind, gpu_flags, cpu_flags = SERVERS[name]
    flags = [*(cpu_flags + CPU_SERVER_FLAGS if ctx.cpu else gpu_flags)]
    common = ["--model", str(ctx.checkpoint), "--host", "127.0.0.1", "--port", str(port)]
    common += ["--served-model-name", MODEL]
    env = dict(ctx.env)
    if ctx.cpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = env.get("VLLM_CPU_KVCACHE_SPACE", "2")
    if kind == "af3-serve":
        return [ctx.python, "-m", "af3_serve.cli", *common, *flags], env
    return [ctx.python, "-m", "vllm.entrypoints.openai.api_server", *common, *flags], {
        **env,
        **UPSTREAM_ENV,
    }


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (exited, not reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    import httpx

    try:
        response = httpx.get(url, timeout=timeout)
        return response.status_code, response.text
    except httpx.HTTPError as exc:
        return 0, str(exc)


def step_start(ctx: Context, state: dict, name: str) -> dict:
    """Start `name` detached (its own session, so it outlives this call) and wait until
    /health answers; a healthy one left by an earlier call is kept. A server that exits
    during its start with the default settings is tried once more with FALLBACK_FLAGS."""
    previous = state["servers"].get(name)
    if previous and pid_alive(previous["pid"]) and previous.get("healthy_after_s"):
        status, _ = http_get(f"{previous['url']}/health")
        if status == 200:
            log(f"{name} already serves at {previous['url']}")
            return {k: v for k, v in previous.items() if k != "pid"} | {"reused": True}
    for info in state["servers"].values():
        stop_server(info)  # each server alone on the GPU
    try:
        info = launch(ctx, state, name, [])
    except ServerExited as exc:
        extra = [] if ctx.cpu else FALLBACK_FLAGS.get(name, [])
        if not extra:
            raise
        log(f"{name} exited with the default settings; once more with {extra}")
        info = launch(ctx, state, name, extra)
        info["fallback"] = {"flags": extra, "default_settings_error": str(exc)[-3000:]}
    if ctx.cpu and "--quantization" in SERVERS[name][1]:
        info["rehearsal_note"] = "CPU dry run: started without --quantization (fp8 is CUDA)"
    ctx.save_state(state)
    log(f"{name} healthy after {info['healthy_after_s']} s: {info['model_class']}")
    return {k: v for k, v in info.items() if k != "pid"}


class ServerExited(RuntimeError):
    """The server process ended during its start."""


def launch(ctx: Context, state: dict, name: str, extra: list[str]) -> dict:
    port = free_port()
    command, env = server_command(ctx, name, port)
    command += extra
    log_path = ctx.work / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("w") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    info = {
        "pid": process.pid,
        "url": f"http://127.0.0.1:{port}",
        "log": str(log_path),
        "command": command,
        "env": {k: v for k, v in env.items() if k.startswith("VLLM_")},
        "started_at": time.time(),
    }
    state["servers"][name] = info
    ctx.save_state(state)
    limit = min(900, max(60, ctx.deadline - time.monotonic() - 30))
    while time.monotonic() - started < limit:
        if process.poll() is not None:
            raise ServerExited(f"{name} exited ({process.returncode}):\n{tail(log_path, 60)}")
        status, _ = http_get(f"{info['url']}/health", 2)
        if status == 200:
            break
        time.sleep(1)
    else:
        raise TimeoutError(f"{name} not healthy after {limit:.0f} s:\n{tail(log_path, 40)}")
    info["healthy_after_s"] = round(time.monotonic() - started, 1)
    info["model_class"] = model_class_line(log_path)
    info["engine_config"] = engine_config_line(log_path)
    return info


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def model_class_line(log_path: Path) -> str:
    text = log_path.read_text(errors="replace")
    match = re.search(r"[^\n]*(Resolved architecture|model class)[^\n]*", text)
    return match.group(0).strip()[-300:] if match else "(not found in log)"


def engine_config_line(log_path: Path) -> str | None:
    text = log_path.read_text(errors="replace")
    match = re.search(r"[^\n]*(Initializing a V1 LLM engine|engine config)[^\n]*", text)
    return match.group(0).strip()[-2000:] if match else None


def stop_server(info: dict | None, timeout_s: float = 60) -> int | None:
    """SIGTERM to a server this script started, with its engine processes (it leads its
    own process group), SIGKILL after `timeout_s`."""
    pid = (info or {}).get("pid")
    if not isinstance(pid, int) or pid <= 1 or not pid_alive(pid):
        return None
    try:
        group = os.getpgid(pid)
    except OSError:
        return None

    def signal_it(sig: int) -> None:
        try:
            os.killpg(pid, sig) if group == pid else os.kill(pid, sig)
        except OSError:
            pass

    signal_it(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.5)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    if pid_alive(pid):
        signal_it(signal.SIGKILL)
    if group == pid:  # engine processes left behind in the group
        time.sleep(1)
        signal_it(signal.SIGKILL)
    return pid


def live_server(state: dict, name: str) -> dict:
    info = state["servers"].get(name)
    if info is None or not pid_alive(info["pid"]):
        raise RuntimeError(f"{name} is not running (its start step did not succeed)")
    status, text = http_get(f"{info['url']}/health")
    if status != 200:
        raise RuntimeError(f"{name} /health answered {status}: {text[:200]}")
    return info


def api_cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# Correctness -------------------------------------------------------------------------------


def chat_request(url: str, audios: list[Any], max_tokens: int) -> dict:
    import httpx

    from benchmarks import harness

    content: list[dict] = [
        {
            "type": "input_audio",
            "input_audio": {
                "data": base64.b64encode(harness.wav_bytes(a)).decode(),
                "format": "wav",
            },
        }
        for a in audios
    ]
    content.append({"type": "text", "text": QUESTION})
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 20,
    }
    started = time.monotonic()
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    elapsed = time.monotonic() - started
    if response.status_code != 200:
        return {"ok": False, "status": response.status_code, "error": response.text[:1000]}
    answer = response.json()
    choice = answer["choices"][0]
    tokens = choice.get("logprobs", {}).get("content") or []
    return {
        "ok": True,
        "seconds": round(elapsed, 3),
        "usage": answer.get("usage"),
        "text": choice["message"]["content"],
        "tokens": [_token_key(t) for t in tokens],
        "first_top_logprobs": [
            [_token_key(t), t["logprob"]] for t in (tokens[0]["top_logprobs"] if tokens else [])
        ],
    }


def _token_key(token: dict) -> str:
    """A token by its bytes (two ids never share them in a byte-level BPE)."""
    raw = token.get("bytes")
    return bytes(raw).hex() if raw is not None else token["token"]


def correctness_prompts() -> dict[str, list[float]]:
    prompts = {f"{s:g}s": [s] for s in CORRECTNESS_SECONDS}
    prompts["two_audios_" + "+".join(f"{s:g}s" for s in TWO_AUDIOS)] = TWO_AUDIOS
    return prompts


def step_correctness(ctx: Context, state: dict, name: str) -> dict:
    from benchmarks.gpu import clips

    info = live_server(state, name)
    answers = {}
    for label, seconds in correctness_prompts().items():
        audios = [clips.clip(s, seed=i + int(s * 10)) for i, s in enumerate(seconds)]
        answers[label] = chat_request(info["url"], audios, GREEDY_TOKENS)
        a = answers[label]
        log(
            f"{name} {label}: "
            + (f"{len(a['tokens'])} tokens" if a["ok"] else f"{a['status']} {a['error'][:200]}")
        )
    return {"server": name, "answers": answers, "speech": clips.have_speech()}


def compare_logprobs(ours: dict, reference: dict) -> dict:
    """First-token logprobs and greedy tokens of two answers to the same prompt."""
    if not (ours.get("ok") and reference.get("ok")):
        return {"compared": False}

    def best(pairs: list) -> dict[str, float]:
        """Token text -> logprob. Tokens that render alike (special tokens and the padded
        vocabulary render as '') count as one, at the best of their logprobs: the same
        function of the distribution on both sides."""
        out: dict[str, float] = {}
        for key, logprob in pairs:
            out[key] = max(logprob, out.get(key, -float("inf")))
        return out

    mine = best(ours["first_top_logprobs"])
    theirs = best(reference["first_top_logprobs"])
    shared = [t for t in theirs if t in mine]
    top_ref = sorted(theirs, key=theirs.get, reverse=True)[:LOGPROB_TOP]
    top_ours = sorted(mine, key=mine.get, reverse=True)[:LOGPROB_TOP]
    diffs = [abs(mine[t] - theirs[t]) for t in top_ref if t in mine]
    same_prefix = 0
    for a, b in zip(ours["tokens"], reference["tokens"], strict=False):
        if a != b:
            break
        same_prefix += 1
    top1_ok = bool(top_ref and top_ours) and top_ours[0] in top_ref and top_ref[0] in top_ours
    max_diff = max(diffs) if diffs else None
    return {
        "compared": True,
        "top1_equal": bool(top_ref and top_ours) and top_ref[0] == top_ours[0],
        "top1_in_each_others_top5": top1_ok,
        "reference_top5_found_in_ours": len(diffs),
        "max_abs_diff_top5": max_diff,
        "mean_abs_diff_shared_top20": (
            sum(abs(mine[t] - theirs[t]) for t in shared) / len(shared) if shared else None
        ),
        "shared_top20": len(shared),
        "greedy_tokens": [len(ours["tokens"]), len(reference["tokens"])],
        "greedy_same_prefix": same_prefix,
        "greedy_identical": ours["tokens"] == reference["tokens"],
        "within_tolerance": (
            top1_ok
            and max_diff is not None
            and len(diffs) == len(top_ref)
            and max_diff <= LOGPROB_TOLERANCE
        ),
    }


# Throughput --------------------------------------------------------------------------------


class Sampler:
    """While a pass runs: the engine's running requests from /metrics (peak), and the
    GPU's utilisation, memory and power from nvidia-smi (where there is one)."""

    def __init__(self, url: str, gpu: bool) -> None:
        self.url, self.gpu = url, gpu
        self.running: list[tuple[float, float]] = []
        self.waiting_peak = 0.0
        self.smi: list[list[float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._metrics, daemon=True)]
        self._process = None

    def __enter__(self) -> "Sampler":
        if self.gpu and shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used,power.draw,clocks.sm",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "250",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            self._threads.append(threading.Thread(target=self._read_smi, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def _metrics(self) -> None:
        while not self._stop.is_set():
            status, text = http_get(f"{self.url}/metrics", 2)
            if status == 200:
                running = waiting = 0.0
                for line in text.splitlines():
                    if line.startswith("vllm:num_requests_running"):
                        running += float(line.rsplit(" ", 1)[1])
                    elif line.startswith("vllm:num_requests_waiting"):
                        waiting += float(line.rsplit(" ", 1)[1])
                self.running.append((time.monotonic(), running))
                self.waiting_peak = max(self.waiting_peak, waiting)
            self._stop.wait(0.25)

    def _read_smi(self) -> None:
        for line in self._process.stdout:
            try:
                self.smi.append([float(v) for v in line.split(",")])
            except ValueError:
                continue

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
        for thread in self._threads:
            thread.join(timeout=5)

    def summary(self) -> dict:
        out = {
            "peak_num_requests_running": max((r for _, r in self.running), default=None),
            "peak_num_requests_waiting": self.waiting_peak,
            "metrics_samples": len(self.running),
        }
        if self.smi:
            util = [s[0] for s in self.smi]
            out |= {
                "gpu_util_mean_pct": sum(util) / len(util),
                "gpu_util_busy_fraction": sum(u > 0 for u in util) / len(util),
                "gpu_memory_used_max_mib": max(s[1] for s in self.smi),
                "gpu_power_mean_w": sum(s[2] for s in self.smi) / len(self.smi),
                "gpu_sm_clock_mean_mhz": sum(s[3] for s in self.smi) / len(self.smi),
                "nvidia_smi_samples": len(self.smi),
            }
        else:
            out["gpu_util_mean_pct"] = None
        return out


def audio_dir(ctx: Context) -> Path | None:
    from benchmarks import harness

    if not harness.SPEECH_WAV.exists():
        return None
    folder = ctx.work / "speech"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / harness.SPEECH_WAV.name
    if not target.exists():
        shutil.copy2(harness.SPEECH_WAV, target)
    return folder


def step_bench(ctx: Context, state: dict, name: str, workload: str) -> dict:
    from benchmarks.gpu import flops

    info = live_server(state, name)
    seconds, count, concurrency = (CPU_WORKLOADS if ctx.cpu else GPU_WORKLOADS)[workload]
    out_dir = ctx.work / "bench" / name / workload
    shutil.rmtree(out_dir, ignore_errors=True)
    source = audio_dir(ctx)
    args = [
        "-m",
        "af3_bench",
        "--url",
        info["url"],
        "--model",
        MODEL,
        "--num-requests",
        str(count),
        "--audio-seconds",
        str(seconds),
        "--max-concurrency",
        str(concurrency),
        "--max-tokens",
        str(MAX_TOKENS),
        "--ignore-eos",
        "--warmup",
        "2",
        "--request-timeout",
        "600",
        "--out-dir",
        str(out_dir),
        "--max-duration",
        str(max(60, int(ctx.deadline - time.monotonic() - 20))),
    ]
    args += ["--audio-dir", str(source)] if source else ["--audio-kind", "noise"]
    cpu_before = api_cpu_seconds(info["pid"])
    with Sampler(info["url"], gpu=not ctx.cpu) as sampler:
        ctx.run(*args, check=True, timeout=max(60, ctx.deadline - time.monotonic()))
    cpu_after = api_cpu_seconds(info["pid"])
    summary = json.loads((out_dir / "summary.json").read_text())
    primary = summary["primary"]
    records = [
        r
        for r in json.loads((out_dir / "requests.json").read_text())
        if r.get("status") == 200 and not r.get("error")
    ]
    dims = flops.Dims.from_checkpoint(ctx.checkpoint)
    total = {"encoder": 0.0, "adaptor": 0.0, "decoder": 0.0, "total": 0.0}
    for r in records:
        f = flops.request_flops(
            dims,
            [int(round(r["audio_seconds"] * 16000))],
            r.get("prompt_tokens") or 0,
            r.get("completion_tokens") or MAX_TOKENS,
        )
        for key in total:
            total[key] += f[key]
    duration = primary["duration_s"]
    env = ctx.result("env") or {}
    rate = env.get("matmul_tflops")
    model_tflops = total["total"] / duration / 1e12 if duration else None
    completed = primary["completed"]
    result = {
        "server": name,
        "workload": {
            "audio_seconds": seconds,
            "requests": count,
            "concurrency": concurrency,
            "max_tokens": MAX_TOKENS,
            "ignore_eos": True,
            "audio": "speech" if source else "noise",
        },
        "completed": completed,
        "failed": primary["failed"],
        "unfinished": primary["unfinished"],
        "errors_by_status": primary.get("errors_by_status"),
        "duration_s": duration,
        "request_throughput": primary["request_throughput"],
        "rtfx": primary["rtfx"],
        "output_tokens_per_s": primary["output_tokens_per_s"],
        "ttft_ms": primary["ttft_ms"],
        "e2el_ms": primary["e2el_ms"],
        "tpot_ms": primary.get("tpot_ms"),
        "ttft_by_audio_length": primary.get("ttft_by_audio_length"),
        "cache": primary.get("cache"),
        "model_flops": total,
        "model_tflops_per_s": model_tflops,
        "matmul_tflops": rate,
        "mfu": model_tflops / rate if model_tflops and rate else None,
        "api_process_cpu_s": round(cpu_after - cpu_before, 3),
        "api_process_cpu_s_per_request": round((cpu_after - cpu_before) / max(completed, 1), 4),
        **sampler.summary(),
        "command": "python " + " ".join(args),
    }
    log(
        f"{name} {workload}: {completed}/{count} ok, {result['request_throughput']:.3f} req/s, "
        f"RTFx {result['rtfx']:.1f}, TTFT p50 {primary['ttft_ms']['p50']:.0f} ms, "
        f"MFU {result['mfu'] if result['mfu'] is None else round(result['mfu'], 3)}"
    )
    return result


def step_stop(ctx: Context, state: dict, name: str) -> dict:
    info = state["servers"].get(name)
    if info is None:
        return {"stopped": False}
    stop_server(info)
    return {"stopped": True, "log_tail": tail(Path(info["log"]), 30)}


# Report ------------------------------------------------------------------------------------


def step_report(ctx: Context) -> dict:
    report: dict[str, Any] = {"correctness": {}, "throughput": {}, "targets": {}}
    ours = ctx.result("ours_bf16.correctness") or {}
    builtin = ctx.result("builtin_bf16.correctness") or {}
    fp8 = ctx.result("ours_fp8.correctness") or {}
    for label in correctness_prompts():
        a = (ours.get("answers") or {}).get(label, {})
        report["correctness"][label] = {
            "ours_vs_builtin": compare_logprobs(a, (builtin.get("answers") or {}).get(label, {})),
            "fp8_drift_vs_ours_bf16": compare_logprobs(
                (fp8.get("answers") or {}).get(label, {}), a
            ),
            "ours_served": a.get("ok", False),
            "builtin_served": (builtin.get("answers") or {}).get(label, {}).get("ok", False),
        }
    embeddings = ctx.result("embeddings")
    report["embeddings_ok"] = embeddings.get("ok") if embeddings else None
    for name in SERVERS:
        for workload in GPU_WORKLOADS:
            r = ctx.result(f"{name}.bench.{workload}")
            if r:
                report["throughput"].setdefault(workload, {})[name] = {
                    k: r.get(k)
                    for k in (
                        "request_throughput",
                        "rtfx",
                        "mfu",
                        "model_tflops_per_s",
                        "peak_num_requests_running",
                        "gpu_util_mean_pct",
                        "api_process_cpu_s_per_request",
                        "completed",
                        "failed",
                    )
                } | {"ttft_p50_ms": r["ttft_ms"]["p50"], "ttft_p99_ms": r["ttft_ms"]["p99"]}

    def ratio(workload: str, a: str, b: str) -> float | None:
        t = report["throughput"].get(workload, {})
        x, y = (
            (t.get(a) or {}).get("request_throughput"),
            (t.get(b) or {}).get("request_throughput"),
        )
        return x / y if x and y else None

    single = [k for k in report["correctness"] if not k.startswith("two_audios")]
    report["targets"] = {
        "embeddings_within_tolerance": report["embeddings_ok"],
        "logprobs_within_tolerance": all(
            report["correctness"][k]["ours_vs_builtin"].get("within_tolerance") for k in single
        ),
        "two_audio_prompt_served_by_ours": report["correctness"][
            next(k for k in report["correctness"] if k.startswith("two_audios"))
        ]["ours_served"],
        "600s_ours_over_builtin": ratio("600s", "ours_bf16", "builtin_bf16"),
        "600s_target_1.3x": _at_least(ratio("600s", "ours_bf16", "builtin_bf16"), 1.3),
        "600s_mfu": ((report["throughput"].get("600s") or {}).get("ours_bf16") or {}).get("mfu"),
        "600s_target_mfu_0.6": _at_least(
            ((report["throughput"].get("600s") or {}).get("ours_bf16") or {}).get("mfu"), 0.6
        ),
        "30s_ours_over_builtin": ratio("30s", "ours_bf16", "builtin_bf16"),
        "30s_target_2x": _at_least(ratio("30s", "ours_bf16", "builtin_bf16"), 2.0),
        "5s_ours_over_builtin": ratio("5s", "ours_bf16", "builtin_bf16"),
        "5s_target_2x": _at_least(ratio("5s", "ours_bf16", "builtin_bf16"), 2.0),
        "600s_fp8_over_builtin_bf16": ratio("600s", "ours_fp8", "builtin_bf16"),
        "600s_target_fp8_1.6x": _at_least(ratio("600s", "ours_fp8", "builtin_bf16"), 1.6),
    }
    report["logprob_tolerance_nats"] = LOGPROB_TOLERANCE
    title = (
        "CPU DRY RUN (bench checkpoint, tiny workloads): not results"
        if ctx.cpu
        else "AF3 at full size, random weights, one H200: af3-serve vs vLLM's built-in AF3"
    )
    plot(report, ctx.out / "gpu_h200.png", title, CPU_WORKLOADS if ctx.cpu else GPU_WORKLOADS)
    return report


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def plot(report: dict, path: Path, title: str, shapes: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in GPU_WORKLOADS if w in report["throughput"]]
    names = list(SERVERS)
    labels = {
        "ours_bf16": "af3-serve bf16",
        "builtin_bf16": "vllm serve (built-in) bf16",
        "ours_fp8": "af3-serve fp8",
    }
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    panels = [
        ("request_throughput", "requests / s", False),
        ("rtfx", "audio seconds / s (RTFx)", False),
        ("ttft_p50_ms", "TTFT p50 (ms, log)", True),
        ("mfu", "model FLOP utilisation", False),
    ]
    width = 0.8 / max(len(names), 1)
    for ax, (key, title, logscale) in zip(axes, panels, strict=True):
        for i, name in enumerate(names):
            values = [
                ((report["throughput"].get(w) or {}).get(name) or {}).get(key) or 0
                for w in workloads
            ]
            ax.bar(
                [j + i * width for j in range(len(workloads))], values, width, label=labels[name]
            )
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(workloads))])
        ax.set_xticklabels([f"{w} x{shapes[w][1]} c{shapes[w][2]}" for w in workloads])
        ax.set_title(title)
        if logscale:
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# The run -----------------------------------------------------------------------------------


def steps() -> list[str]:
    """In the order that gives the most for the device time: our engine starts first (fail
    fast), the bf16 comparison before anything else, the embeddings check where no server
    holds the GPU's memory, fp8 last."""

    def server(name: str) -> list[str]:
        names = [f"{name}.start", f"{name}.correctness"]
        return [*names, *(f"{name}.bench.{w}" for w in GPU_WORKLOADS), f"{name}.stop"]

    return [
        "stash",
        "install",
        "own",
        "env",
        "checkpoint",
        *server("ours_bf16"),
        *server("builtin_bf16"),
        "embeddings",
        *server("ours_fp8"),
        "report",
    ]


def estimate(step: str) -> float:
    kind = step.split(".", 1)[-1]
    if kind.startswith("bench."):
        kind = "bench:" + kind.split(".", 1)[1]
    return ESTIMATES.get(kind, ESTIMATES.get(step, 60))


# The steps that need only the context; the others are "<server>.<action>".
PLAIN_STEPS = {
    "stash": step_stash,
    "install": step_install,
    "own": step_own,
    "env": step_env,
    "checkpoint": step_checkpoint,
    "embeddings": step_embeddings,
    "report": step_report,
}
SERVER_STEPS = {"start": step_start, "correctness": step_correctness, "stop": step_stop}


def execute(ctx: Context, state: dict, step: str) -> dict:
    if step in PLAIN_STEPS:
        return PLAIN_STEPS[step](ctx)
    server, action = step.split(".", 1)
    if action in SERVER_STEPS:
        return SERVER_STEPS[action](ctx, state, server)
    return step_bench(ctx, state, server, action.split(".", 1)[1])


# A failed step ends the run (FATAL) or only what depends on it (its server's steps).
FATAL = {"stash", "install", "env", "checkpoint"}


def collect(ctx: Context, state: dict, started: float, note: str) -> None:
    """Everything so far to $OUT: results.json, the plot (report step), server logs' ends,
    and the af3-bench outputs as one archive."""
    results = {}
    for path in sorted(ctx.results_dir.glob("*.json")):
        if not path.name.endswith(".raw.json"):
            results[path.stem] = json.loads(path.read_text())
    document = {
        "issue": 14,
        "mode": "cpu dry run" if ctx.cpu else "h200",
        "note": note,
        "this_call_s": round(time.monotonic() - started, 1),
        "steps": state["steps"],
        "servers": {
            k: {kk: vv for kk, vv in v.items() if kk != "pid"} for k, v in state["servers"].items()
        },
        "results": results,
    }
    try:  # the comparisons and the plot from whatever is there so far
        document["report"] = step_report(ctx)
    except Exception as exc:
        document["report_error"] = f"{type(exc).__name__}: {exc}"
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / "results.json").write_text(json.dumps(document, indent=1) + "\n")
    with (ctx.out / "server-logs.txt").open("w") as f:
        for name, info in state["servers"].items():
            f.write(f"===== {name}: {' '.join(info['command'])}\n")
            f.write(tail(Path(info["log"]), 150) + "\n")
    bench = ctx.work / "bench"
    if bench.is_dir():
        with tarfile.open(ctx.out / "bench.tar.xz", "w:xz") as tar:
            for path in sorted(bench.rglob("*")):
                if path.is_file() and path.name in ("summary.json", "requests.csv"):
                    tar.add(path, arcname=str(path.relative_to(bench)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the dry run on the CPU build")
    parser.add_argument(
        "--work", type=Path, help="default: ~/af3-gpu (device), .cache/gpu-work-cpu"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", ROOT / ".cache" / "gpu-out"))
    )
    parser.add_argument("--carry", type=Path, default=CARRY)
    parser.add_argument(
        "--deadline-s",
        type=float,
        help="this call's budget (default 540 s, so a 600-s call ends cleanly; --cpu: none)",
    )
    parser.add_argument("--retry", action="store_true", help="run failed steps again")
    parser.add_argument("--only", nargs="*", help="run just these steps (and stash)")
    parser.add_argument("--reset", action="store_true", help="forget the state (not the files)")
    args = parser.parse_args()

    started = time.monotonic()
    work = (
        args.work or (ROOT / ".cache" / "gpu-work-cpu" if args.cpu else Path.home() / "af3-gpu")
    ).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **OFFLINE_ENV}
    if args.cpu:
        python = sys.executable
        env.pop("HF_HUB_OFFLINE", None)
    else:
        python = sys.executable  # the image's python3
    deadline_s = args.deadline_s or (6 * 3600 if args.cpu else 540)
    ctx = Context(args.cpu, work, args.out, args.carry, started + deadline_s, python, env)
    state = ctx.load_state()
    if args.reset:
        state = {"steps": {}, "servers": state.get("servers", {})}
    ctx.save_state(state)

    note = "ALL DONE"
    for step in steps():
        record = state["steps"].get(step, {})
        # stash, the stops and the report run every time: cheap, and they keep the machine
        # and the results consistent after any step was run again.
        always = step in ("stash", "own", "report") or step.endswith(".stop")
        if step == "install" and record.get("status") == "ok":
            stashed = state["steps"]["stash"].get("result", {}).get("archive_sha256")
            if (ctx.result("install") or {}).get("archive_sha256") != stashed:
                record = {}  # a new carry set arrived: unpack it
        if record.get("status") == "ok" and not always:
            continue
        if record.get("status") in ("failed", "skipped") and not args.retry and not always:
            continue
        if args.only and step not in args.only and step != "stash":
            continue
        if step != "stash" and state["steps"].get("stash", {}).get("result", {}).get("missing"):
            missing = state["steps"]["stash"]["result"]["missing"]
            note = f"waiting for parts {missing}: run the next call"
            break
        path = python_path(ctx) if (ctx.work / "site").is_dir() else None
        if path and not args.cpu:
            ctx.env["PYTHONPATH"] = path
        server = step.split(".")[0]
        if server in SERVERS and not step.endswith((".start", ".stop")):
            start_record = state["steps"].get(f"{server}.start", {})
            if start_record.get("status") in ("failed", "skipped"):
                state["steps"][step] = {"status": "skipped", "why": f"{server} did not start"}
                ctx.save_state(state)
                continue
        remaining = ctx.deadline - time.monotonic()
        if (not args.cpu or args.deadline_s) and estimate(step) > remaining:
            note = (
                f"deadline: {step} (~{estimate(step)} s) does not fit in {remaining:.0f} s; "
                "run the same command again"
            )
            break
        log(f"== {step}")
        t0 = time.monotonic()
        try:
            result = execute(ctx, state, step)
            status = "ok"
        except Exception as exc:  # recorded, then the run goes on where it can
            result = {
                "error": f"{type(exc).__name__}: {exc}"[-6000:],
                "traceback": traceback.format_exc()[-4000:],
            }
            status = "failed"
            log(f"{step} FAILED: {result['error'][:3000]}")
        state["steps"][step] = {"status": status, "seconds": round(time.monotonic() - t0, 1)}
        if step == "stash":
            state["steps"][step]["result"] = result
        ctx.result(step, result)
        ctx.save_state(state)
        collect(ctx, state, started, f"after {step}")
        if status == "failed" and step in FATAL:
            note = f"stopped: {step} failed (see results.json); fix, then rerun with --retry"
            break
        if status == "failed" and step.endswith(".start"):
            stop_server(state["servers"].get(server))
    collect(ctx, state, started, note)
    summary = {k: v["status"] for k, v in state["steps"].items()}
    print(json.dumps(summary, indent=None))
    report = ctx.result("report")
    if report:
        print(json.dumps(report["targets"], indent=1))
    print(note)


if __name__ == "__main__":
    main()
