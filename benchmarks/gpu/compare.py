"""af3-serve against `vllm serve` (vLLM's built-in AF3) on one CUDA GPU at full AF3 size:
correctness, then throughput, each server alone on the GPU.

    python -m benchmarks.gpu.compare --out DIR          # a CUDA host with `.[gpu]`
    python -m benchmarks.gpu.compare --out DIR --cpu    # the same steps on the CPU build

The checkpoint is random-weight and full-size (`checkpoint.py`, the `real` preset: encoder
32 layers d1280, adaptor 1280->3584->3584, Qwen2.5-7B's 28 layers, bf16), written once
to `--checkpoint`. The steps, in this order:

1. correctness: our audio embeddings against transformers' (`embeddings.py`, no server
   running); the first-token logprobs and 32 greedy tokens of both servers on 3.3-, 47.5-
   and 600-s clips; a prompt with two audios (ours).
2. 600 s x 32 requests at concurrency 16, each server;
3. 30 s x 256 at concurrency 64, each server;
4. af3-serve with `--quantization fp8`: correctness (drift from bf16) and 600 s x 32;
5. 5 s x 512 at concurrency 128, each server.

Each workload is an af3-bench pass (32 tokens, `--ignore-eos`), sampled meanwhile for the
peak `vllm:num_requests_running` and nvidia-smi's utilisation; its model FLOPs
(`flops.py`) give the MFU against the GEMM rate measured at the start. The two servers take
turns in alternating order (as af3-bench's `--compare` does), so that each starts as few
times as the order allows. After every step, `DIR/steps/<step>.json`, `DIR/results.json`
and `DIR/report.md` are written; a rerun skips the steps done (`--retry`: the failed
ones too; `--only STEP ...`). `--cpu`: the bench preset in float32 on the CPU build,
small counts, fp8 started without `--quantization` (a CUDA path); not results.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.gpu import flops

MAX_TOKENS = 32
WARMUP = 2  # untimed requests before each workload
QUESTION = "What is said in the audio?"
CLIPS = {"3.3s": [3.3], "47.5s": [47.5], "600s": [600.0], "two_audios": [47.5, 3.3]}

# First-token logprobs, ours against the built-in, same weights, both bf16. The logits are
# z = W h with W's rows N(0, 0.02^2) (the init range) and h the final RMS-normed hidden
# state, so they spread 0.02 * sqrt(3584) = 1.2 nats. Two bf16 implementations (unit
# roundoff 2^-8) through 60 residual blocks with different kernels differ by 1-3% in the
# final hidden state: 0.02-0.04 nats a logit, ~0.1 at worst over the top 5. A real defect
# (audio misplaced, a wrong window or mask) moves logits by their whole spread, ~1 nat;
# 0.25 sits between. Each side's top token must also be in the other's top 5.
LOGPROB_TOLERANCE = 0.25
LOGPROB_TOP = 5


@dataclass(frozen=True)
class Mode:
    preset: str
    device: str
    dtype: str
    workloads: dict[str, tuple[float, int, int]]  # audio seconds, requests, concurrency
    flags: tuple[str, ...]  # both servers' engine flags
    env: dict[str, str] = field(default_factory=dict)


GPU = Mode(
    "real",
    "cuda",
    "bfloat16",
    {"600s": (600.0, 32, 16), "30s": (30.0, 256, 64), "5s": (5.0, 512, 128)},
    ("--dtype", "bfloat16"),
)
CPU = Mode(
    "bench",
    "cpu",
    "float32",
    {"600s": (600.0, 2, 2), "30s": (30.0, 4, 2), "5s": (5.0, 4, 2)},
    harness.ENGINE,
    {"VLLM_CPU_KVCACHE_SPACE": "2"},
)
SERVERS = {"ours": (), "builtin": (), "ours_fp8": ("--quantization", "fp8")}
# If `vllm serve` exits at vLLM's defaults (AF3's 10-min prompt), once more at these, and
# its results say so.
FALLBACK = harness.engine_size_flags()
STEPS = [
    "environment",
    "checkpoint",
    "embeddings",
    *("correctness.ours", "correctness.builtin"),
    *("600s.builtin", "600s.ours"),
    *("30s.ours", "30s.builtin"),
    *("correctness.ours_fp8", "600s.ours_fp8"),
    *("5s.builtin", "5s.ours"),
]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Servers:
    """At most one server at a time, started when a step needs it, kept for the next."""

    def __init__(self, mode: Mode, checkpoint: Path, logs: Path) -> None:
        self.mode, self.checkpoint, self.logs = mode, checkpoint, logs
        self.current: tuple[str, harness.Server] | None = None
        self.info: dict[str, dict] = {}
        self.failed: dict[str, str] = {}

    def get(self, name: str) -> harness.Server:
        if self.current and self.current[0] == name:
            return self.current[1]
        self.stop()
        if name in self.failed:
            raise harness.ServerError(f"{name} did not start: {self.failed[name][-2000:]}")
        try:
            server = self._start(name, ())
        except harness.ServerError as exc:
            if name != "builtin" or self.mode is CPU:
                self.failed[name] = str(exc)
                raise
            log(f"{name} exited at vLLM's defaults; once more with {FALLBACK}")
            try:
                server = self._start(name, FALLBACK)
            except harness.ServerError as again:
                self.failed[name] = str(again)
                raise
            self.info[name]["fallback"] = {"flags": FALLBACK, "default_error": str(exc)[-3000:]}
        self.current = (name, server)
        return server

    def _start(self, name: str, extra: tuple[str, ...]) -> harness.Server:
        quantization = SERVERS[name] if self.mode is GPU else ()
        flags = [*self.mode.flags, *quantization, *extra]
        env = {**os.environ, **self.mode.env}
        log_file = self.logs / f"{name}.log"
        started = time.monotonic()
        if name == "builtin":
            server = harness.launch_vllm_serve(self.checkpoint, log_file, *flags, env=env)
        else:
            flags += ["--served-model-name", harness.MODEL]
            server = harness.launch_af3_serve(self.checkpoint, log_file, *flags, env=env)
        server.wait_healthy(timeout_s=1800)
        self.info[name] = {
            "command": server.command,
            "healthy_after_s": round(time.monotonic() - started, 1),
            "model_class": server.model_class(),
            "note": None if quantization == SERVERS[name] else "CPU: without --quantization",
        }
        log(f"{name} healthy after {self.info[name]['healthy_after_s']} s")
        return server

    def stop(self) -> None:
        if self.current:
            self.current[1].stop()
            self.current = None


# Steps ---------------------------------------------------------------------------------


@dataclass
class Run:
    mode: Mode
    out: Path
    checkpoint: Path
    servers: Servers

    def result(self, step: str) -> dict | None:
        path = self.out / "steps" / f"{step}.json"
        return json.loads(path.read_text()) if path.exists() else None


def run_module(*args: str, out: Path | None = None) -> dict:
    """`python -m MODULE ARGS` of this checkout in a process of its own (its stderr shown);
    its JSON: stdout's last line, or the file `out`."""
    stdout = subprocess.PIPE if out is None else None
    done = subprocess.run([sys.executable, "-m", *args], stdout=stdout, text=True)
    if done.returncode:
        raise RuntimeError(f"{args[0]} exited with {done.returncode} (its output is above)")
    return json.loads(out.read_text() if out else done.stdout.splitlines()[-1])


def step_environment(run: Run) -> dict:
    smi = shutil.which("nvidia-smi")
    listing = subprocess.run([smi, "-L"], capture_output=True, text=True).stdout if smi else None
    return run_module("benchmarks.gpu.flops") | {"nvidia_smi": listing}


def step_checkpoint(run: Run) -> dict:
    if (run.checkpoint / "config.json").exists():  # written last; or a checkpoint of yours
        marker = run.checkpoint / harness.CONSTANTS.TINY_CHECKPOINT_MARKER
        return (json.loads(marker.read_text()) if marker.exists() else {}) | {"reused": True}
    args = ["benchmarks.gpu.checkpoint", str(run.checkpoint), "--preset", run.mode.preset]
    return run_module(*args, "--device", run.mode.device, "--dtype", run.mode.dtype)


def step_embeddings(run: Run) -> dict:
    run.servers.stop()  # transformers and our model need the GPU's memory
    seconds = [str(s) for s in CLIPS["600s"] + CLIPS["47.5s"] + CLIPS["3.3s"]]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "embeddings.json"
        args = ["benchmarks.gpu.embeddings", str(run.checkpoint), "--device", run.mode.device]
        args += ["--dtype", run.mode.dtype, "--seconds", *seconds, "--out", str(out)]
        return run_module(*args, out=out)


def chat(url: str, audios: list, max_tokens: int) -> dict:
    """One greedy answer with the first token's top-20 logprobs."""
    import httpx

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
    body = {
        "model": harness.MODEL,
        "messages": [{"role": "user", "content": [*content, {"type": "text", "text": QUESTION}]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 20,
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=1200)
    if response.status_code != 200:
        return {"ok": False, "status": response.status_code, "error": response.text[:1000]}
    choice = response.json()["choices"][0]
    tokens = (choice.get("logprobs") or {}).get("content") or []

    def key(token: dict) -> str:  # by its bytes: two ids never share them in byte-level BPE
        raw = token.get("bytes")
        return bytes(raw).hex() if raw is not None else token["token"]

    first = tokens[0]["top_logprobs"] if tokens else []
    return {
        "ok": True,
        "text": choice["message"]["content"],
        "tokens": [key(t) for t in tokens],
        "first_top_logprobs": [[key(t), t["logprob"]] for t in first],
    }


def step_correctness(run: Run, name: str) -> dict:
    from benchmarks.gpu import clips

    server = run.servers.get(name)
    answers = {}
    for label, seconds in CLIPS.items():
        audios = [clips.clip(s, seed=i + int(s * 10)) for i, s in enumerate(seconds)]
        answers[label] = chat(server.url, audios, MAX_TOKENS)
        log(f"{name} {label}: " + ("ok" if answers[label]["ok"] else answers[label]["error"][:200]))
    return {"server": run.servers.info[name], "answers": answers}


class Sampler:
    """While a pass runs: the engine's running requests from /metrics (the peak) and, where
    there is nvidia-smi, the GPU's utilisation, memory and power."""

    QUERY = "utilization.gpu,memory.used,power.draw"

    def __init__(self, url: str) -> None:
        self.url, self.running, self.smi = url, [0.0], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._metrics, daemon=True)]
        self._smi = None

    def __enter__(self) -> "Sampler":
        if smi := shutil.which("nvidia-smi"):
            command = [smi, f"--query-gpu={self.QUERY}", "--format=csv,noheader,nounits"]
            self._smi = subprocess.Popen(
                [*command, "-lms", "250"], stdout=subprocess.PIPE, text=True
            )
            self._threads.append(threading.Thread(target=self._read_smi, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def _metrics(self) -> None:
        import httpx

        while not self._stop.wait(0.25):
            try:
                text = httpx.get(f"{self.url}/metrics", timeout=2).text
            except httpx.HTTPError:
                continue
            lines = text.splitlines()
            running = [ln for ln in lines if ln.startswith("vllm:num_requests_running")]
            self.running.append(sum(float(ln.rsplit(" ", 1)[1]) for ln in running))

    def _read_smi(self) -> None:
        for line in self._smi.stdout:
            try:
                self.smi.append([float(v) for v in line.split(",")])
            except ValueError:
                continue

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._smi:
            self._smi.terminate()
            self._smi.wait()
        for thread in self._threads:
            thread.join(timeout=5)

    def summary(self) -> dict:
        def mean(i: int) -> float | None:
            return sum(s[i] for s in self.smi) / len(self.smi) if self.smi else None

        return {
            "peak_num_requests_running": max(self.running),
            "gpu_util_mean_pct": mean(0),
            "gpu_memory_used_max_mib": max((s[1] for s in self.smi), default=None),
            "gpu_power_mean_w": mean(2),
        }


def step_workload(run: Run, workload: str, name: str) -> dict:
    server = run.servers.get(name)
    seconds, count, concurrency = run.mode.workloads[workload]
    out_dir = run.out / "bench" / f"{workload}.{name}"
    shutil.rmtree(out_dir, ignore_errors=True)
    args = ["--url", server.url, "--model", harness.MODEL, "--num-requests", str(count)]
    args += ["--audio-seconds", str(seconds), "--max-concurrency", str(concurrency)]
    args += ["--max-tokens", str(MAX_TOKENS), "--ignore-eos", "--warmup", str(WARMUP)]
    args += ["--request-timeout", "1200", "--out-dir", str(out_dir)]
    if harness.SPEECH_WAV.exists():
        speech = run.out / "speech"
        speech.mkdir(exist_ok=True)
        shutil.copy2(harness.SPEECH_WAV, speech / harness.SPEECH_WAV.name)
        args += ["--audio-dir", str(speech)]
    else:  # random weights do not care what they hear
        args += ["--audio-kind", "noise"]
    cpu_before = server.cpu_seconds()
    with Sampler(server.url) as sampler:
        primary = harness.run_af3_bench(*args)["primary"]
    api_cpu = server.cpu_seconds() - cpu_before
    dims = flops.Dims.from_checkpoint(run.checkpoint)
    done = [
        r
        for r in json.loads((out_dir / "requests.json").read_text())
        if r.get("status") == 200 and not r.get("error")
    ]
    model_flops = sum(
        flops.request_flops(
            dims,
            [round(r["audio_seconds"] * harness.SAMPLE_RATE)],
            r.get("prompt_tokens") or 0,
            r.get("completion_tokens") or MAX_TOKENS,
        )["total"]
        for r in done
    )
    rate = (run.result("environment") or {}).get("gemm_tflops")
    model_tflops = model_flops / primary["duration_s"] / 1e12
    result = {
        "server": run.servers.info[name],
        "workload": {"audio_seconds": seconds, "requests": count, "concurrency": concurrency},
        **{k: primary.get(k) for k in ("completed", "failed", "unfinished", "errors_by_status")},
        **{k: primary.get(k) for k in ("duration_s", "request_throughput", "rtfx")},
        **{k: primary.get(k) for k in ("ttft_ms", "tpot_ms", "e2el_ms", "ttft_by_audio_length")},
        "model_tflops_per_s": model_tflops,
        "mfu": model_tflops / rate if rate else None,
        # The warm-up requests were served in the same process: they count too.
        "api_process_cpu_s_per_request": api_cpu / (primary["completed"] + WARMUP),
        **sampler.summary(),
    }
    log(
        f"{workload} {name}: {primary['completed']}/{count}, "
        f"{primary['request_throughput']:.3f} req/s, TTFT p50 {primary['ttft_ms']['p50']:.0f} ms"
    )
    return result


def execute(run: Run, step: str) -> dict:
    if step in ("environment", "checkpoint", "embeddings"):
        return globals()[f"step_{step}"](run)
    kind, name = step.split(".")
    if kind == "correctness":
        return step_correctness(run, name)
    return step_workload(run, kind, name)


# Report --------------------------------------------------------------------------------


def compare_logprobs(ours: dict | None, reference: dict | None) -> dict | None:
    """First-token logprobs and greedy tokens of two answers to the same prompt."""
    if not (ours and reference and ours["ok"] and reference["ok"]):
        return None

    def best(pairs: list) -> dict[str, float]:
        """Tokens that render alike (special tokens, the padded vocabulary) count as one, at
        the best of their logprobs: the same function of the distribution on both sides."""
        out: dict[str, float] = {}
        for token, logprob in pairs:
            out[token] = max(logprob, out.get(token, -float("inf")))
        return out

    mine, theirs = best(ours["first_top_logprobs"]), best(reference["first_top_logprobs"])
    top_mine = sorted(mine, key=mine.get, reverse=True)[:LOGPROB_TOP]
    top_theirs = sorted(theirs, key=theirs.get, reverse=True)[:LOGPROB_TOP]
    diffs = [abs(mine[t] - theirs[t]) for t in top_theirs if t in mine]
    top1 = bool(top_mine and top_theirs) and top_mine[0] in top_theirs and top_theirs[0] in top_mine
    prefix = 0
    for a, b in zip(ours["tokens"], reference["tokens"], strict=False):
        if a != b:
            break
        prefix += 1
    worst = max(diffs) if diffs else None
    return {
        "max_abs_diff_top5": worst,
        "top1_in_each_others_top5": top1,
        "greedy_same_prefix": prefix,
        "within_tolerance": top1
        and len(diffs) == len(top_theirs)
        and worst is not None
        and worst <= LOGPROB_TOLERANCE,
    }


THROUGHPUT = {  # report column: the workload result's key
    "req/s": "request_throughput",
    "audio-s/s": "rtfx",
    "TTFT p50 ms": "ttft_p50_ms",
    "TTFT p99 ms": "ttft_p99_ms",
    "peak running": "peak_num_requests_running",
    "GPU util %": "gpu_util_mean_pct",
    "MFU": "mfu",
    "API CPU s/req": "api_process_cpu_s_per_request",
    "completed": "completed",
    "failed": "failed",
}


def report(run: Run) -> dict:
    """The comparisons of what the steps so far measured."""

    def answers(name: str) -> dict:
        return (run.result(f"correctness.{name}") or {}).get("answers", {})

    ours, builtin, fp8 = answers("ours"), answers("builtin"), answers("ours_fp8")
    environment = run.result("environment") or {"error": "not run"}
    correctness = {
        label: {
            "ours_served": (ours.get(label) or {}).get("ok"),
            "builtin_served": (builtin.get(label) or {}).get("ok"),
            "ours_vs_builtin": compare_logprobs(ours.get(label), builtin.get(label)),
            "fp8_vs_ours": compare_logprobs(fp8.get(label), ours.get(label)),
        }
        for label in CLIPS
    }
    throughput: dict[str, dict] = {}
    for step in STEPS:
        workload, _, name = step.partition(".")
        r = run.result(step) if workload in run.mode.workloads else None
        if r and "error" not in r:
            row = r | {"ttft_p50_ms": r["ttft_ms"]["p50"], "ttft_p99_ms": r["ttft_ms"]["p99"]}
            throughput.setdefault(workload, {})[name] = {k: row.get(k) for k in THROUGHPUT.values()}
    for rows in throughput.values():
        a, b = (rows.get(n, {}).get("request_throughput") for n in ("ours", "builtin"))
        rows["ours_over_builtin_req_s"] = a / b if a and b else None
    return {
        "environment": environment if "error" not in environment else None,
        "embeddings_ok": (run.result("embeddings") or {}).get("ok"),
        "logprob_tolerance_nats": LOGPROB_TOLERANCE,
        "correctness": correctness,
        "throughput": throughput,
    }


def markdown(document: dict, mode: Mode) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, dict):  # a logprob comparison
            return (
                f"{value['max_abs_diff_top5']:.3g} ({'ok' if value['within_tolerance'] else 'NO'})"
            )
        return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    title = "CPU rehearsal, bench checkpoint: not results" if mode is CPU else "one GPU"
    lines = [f"# af3-serve against vllm serve ({title})", ""]
    if env := document["environment"]:
        lines += [
            f"{env['device']}, {env['versions']}; GEMM {env['gemm']}: "
            f"{env['gemm_tflops']:.1f} TFLOP/s",
            "",
        ]
    lines += [f"Embeddings within tolerance of transformers: {cell(document['embeddings_ok'])}", ""]
    lines += [
        "| prompt | ours served | built-in served | ours vs built-in, first-token top-5 "
        "max diff (nats) | fp8 vs ours |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, c in document["correctness"].items():
        lines.append(f"| {label} | " + " | ".join(cell(v) for v in c.values()) + " |")
    lines += ["", "| workload | server | " + " | ".join(THROUGHPUT) + " |"]
    lines += ["| --- " * (len(THROUGHPUT) + 2) + "|"]
    ratios = []
    for workload, rows in document["throughput"].items():
        seconds, count, concurrency = mode.workloads[workload]
        shape = f"{seconds:g} s x {count}, c{concurrency}"
        for name, row in rows.items():
            if isinstance(row, dict):
                values = " | ".join(cell(row[k]) for k in THROUGHPUT.values())
                lines.append(f"| {shape} | {name} | {values} |")
        ratios.append(f"{shape}: {cell(rows['ours_over_builtin_req_s'])}")
    lines += ["", "req/s, ours / built-in: " + "; ".join(ratios)]
    return "\n".join(lines) + "\n"


def write_results(run: Run, status: dict) -> None:
    document = report(run)
    full = {"mode": "cpu rehearsal" if run.mode is CPU else "gpu", "steps": status}
    full |= {"checkpoint": str(run.checkpoint), "report": document}
    full["results"] = {step: run.result(step) for step in STEPS if run.result(step)}
    (run.out / "results.json").write_text(json.dumps(full, indent=1) + "\n")
    (run.out / "report.md").write_text(markdown(document, run.mode))


def main() -> None:
    parser = harness.script_parser(__doc__, "results folder")
    parser.add_argument("--cpu", action="store_true", help="rehearse on the CPU build")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="written there if it has no config.json (default .cache/bench-checkpoints/compare-"
        "<preset>); an AF3 checkpoint of yours is served as it is",
    )
    parser.add_argument("--retry", action="store_true", help="run failed steps again")
    parser.add_argument("--only", nargs="+", choices=STEPS, help="run just these steps")
    args = parser.parse_args()
    mode = CPU if args.cpu else GPU
    out = args.out.resolve()
    (out / "steps").mkdir(parents=True, exist_ok=True)
    checkpoint = (args.checkpoint or harness.CHECKPOINTS / f"compare-{mode.preset}").resolve()
    run = Run(mode, out, checkpoint, Servers(mode, checkpoint, out / "logs"))
    status_path = out / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    started = time.monotonic()
    # Stopped from outside (a timeout, Ctrl-C): the `finally` below still stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for step in STEPS:
            previous = status.get(step, {}).get("status")
            if args.only and step not in args.only:
                continue
            if not args.only and (previous == "ok" or (previous == "failed" and not args.retry)):
                continue
            log(f"== {step}")
            t0 = time.monotonic()
            try:
                result, state = execute(run, step), "ok"
            except Exception as exc:  # recorded; the steps that do not need it still run
                result = {"error": f"{type(exc).__name__}: {exc}"[-6000:]}
                result["traceback"] = traceback.format_exc()[-4000:]
                state = "failed"
                log(f"{step} FAILED: {result['error'][:2000]}")
            (out / "steps" / f"{step}.json").write_text(json.dumps(result, indent=1) + "\n")
            status[step] = {"status": state, "seconds": round(time.monotonic() - t0, 1)}
            status_path.write_text(json.dumps(status, indent=1) + "\n")
            write_results(run, status)
            if state == "failed" and step in ("environment", "checkpoint"):
                break
    finally:
        run.servers.stop()
    write_results(run, status)
    print((out / "report.md").read_text())
    log(
        f"{sum(s['status'] == 'ok' for s in status.values())}/{len(STEPS)} steps ok, "
        f"this run {time.monotonic() - started:.0f} s; {out}/"
    )


if __name__ == "__main__":
    main()
