"""What the measurement scripts in benchmarks/ share, and the tests' server too: servers on
a free loopback port (af3-serve, and vLLM's own `vllm serve` with our plugin off) waited
for until healthy, the bench checkpoints, one timing helper, real speech clips of any
length, and how results are written.

Runs from a checkout (`python -m benchmarks.<script>` in the repository root); it is not
installed. At import it needs only the standard library and numpy, so the GPU scripts run
where only torch and transformers are installed; httpx, psutil and the checkpoint builder
are imported where used.
"""

import argparse
import importlib
import importlib.util
import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time
import wave
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / ".cache" / "bench-checkpoints"


def model_executor(module: str) -> ModuleType:
    """`af3_model_executor.<module>`, from the installed package or, where af3-serve is not
    installed (a GPU host with only torch and transformers), from this checkout's
    model_executor/. The package itself imports nothing heavy (vLLM only when
    its plugin registers), so modules without vLLM imports load without vLLM."""
    if importlib.util.find_spec("af3_model_executor") is None:
        folder = ROOT / "model_executor"
        spec = importlib.util.spec_from_file_location(
            "af3_model_executor", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules["af3_model_executor"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"af3_model_executor.{module}")


CONSTANTS = model_executor("constants")
SAMPLE_RATE = CONSTANTS.SAMPLE_RATE
AF3_AUDIO = model_executor("audio_spec").AudioSpec()
# The longest AF3 audio: what the per-request costs are measured on.
LONGEST_AUDIO_SECONDS = AF3_AUDIO.max_audio_seconds
# AF3's chat template around one audio and a short question, in prompt tokens.
TEMPLATE_TOKENS = 40

# Servers -------------------------------------------------------------------------------

MODEL = CONSTANTS.DEFAULT_SERVED_MODEL_NAME


def engine_size_flags(spec: Any = AF3_AUDIO) -> tuple[str, ...]:
    """af3-serve's sizes for a checkpoint's longest audio (`AudioSpec.engine_sizes`), as
    flags, so that `vllm serve` runs on the same ones."""
    sizes = spec.engine_sizes(CONSTANTS.DEFAULT_DECODER_POSITIONS)
    return (
        *("--max-model-len", str(sizes["max_model_len"])),
        *("--max-num-batched-tokens", str(sizes["max_num_batched_tokens"])),
    )


# One engine setting for both servers: AF3's 10-min audio prompt prefills in one step.
ENGINE = (*engine_size_flags(), "--dtype", "float32", "--enforce-eager")
# `vllm serve` with this environment runs vLLM's built-in AF3: the allowlist names no
# plugin, so ours is not loaded (its log names the model class it resolved).
UPSTREAM_ENV = {"VLLM_PLUGINS": "none-of-ours"}


def script_parser(doc: str, out_help: str) -> argparse.ArgumentParser:
    """A measurement script's command line: its docstring's first line, and where its
    results go (`--out`)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    return parser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback_server(module: str, checkpoint: Path, port: int, *extra: str) -> list[str]:
    """A server module on loopback, from this Python (so from this virtual environment)."""
    host = ["--host", "127.0.0.1", "--port", str(port)]
    return [sys.executable, "-m", module, "--model", str(checkpoint), *host, *extra]


def af3_serve_command(checkpoint: Path, port: int, *extra: str) -> list[str]:
    return _loopback_server("af3_serve.cli", checkpoint, port, *extra)


def vllm_serve_command(checkpoint: Path, port: int, *extra: str) -> list[str]:
    """vLLM's own OpenAI server (`vllm serve`), serving the checkpoint as `MODEL`."""
    module = "vllm.entrypoints.openai.api_server"
    return _loopback_server(module, checkpoint, port, "--served-model-name", MODEL, *extra)


class ServerError(RuntimeError):
    """A server exited, or did not become healthy, during its start."""


@dataclass
class Server:
    """A server process started by `launch`; as a context manager, stopped on exit."""

    command: list[str]
    url: str
    log: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def model_class(self) -> str:
        """The log line naming the model class the engine resolved: which AF3 it serves."""
        match = re.search(r"[^\n]*(Resolved architecture|model class)[^\n]*", self.log_text())
        return match.group(0).strip()[-300:] if match else "(not found in log)"

    def wait_healthy(self, timeout_s: float = 600) -> "Server":
        """Wait until GET /health answers 200; else stop it and raise with its log's end."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(self._failure(f"exited ({self.process.returncode})"))
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(self._failure(f"was not healthy after {timeout_s:.0f} s"))

    def _failure(self, what: str) -> str:
        return f"{self.command[2]} {what} during its start; {self.log}:\n{self.log_text()[-4000:]}"

    def cpu_seconds(self) -> float:
        """CPU time of the server process itself (the API process), not of its engine
        children."""
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM (in-flight requests finish), SIGKILL after `timeout_s`; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def launch(command: list[str], log: Path, env: Mapping[str, str] | None = None) -> Server:
    """Start a loopback server command (its `--port` gives the URL), stdout and stderr to
    `log`; returns at once: call `wait_healthy`."""
    port = command[command.index("--port") + 1]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=None if env is None else dict(env)
        )
    return Server(command, f"http://127.0.0.1:{port}", log, process)


def launch_af3_serve(
    checkpoint: Path, log: Path, *extra: str, env: Mapping[str, str] | None = None
) -> Server:
    """af3-serve on a free loopback port (`env`: default this process's)."""
    return launch(af3_serve_command(checkpoint, free_port(), *extra), log, env)


def launch_vllm_serve(
    checkpoint: Path, log: Path, *extra: str, env: Mapping[str, str] | None = None
) -> Server:
    """`vllm serve` with vLLM's built-in AF3 (our plugin off) on a free loopback port."""
    env = {**(os.environ if env is None else env), **UPSTREAM_ENV}
    return launch(vllm_serve_command(checkpoint, free_port(), *extra), log, env)


# vLLM's router in front of af3-serve replicas. sticky_least_loaded sends each new
# conversation (named by the X-Session-ID header our clients send) to the least-loaded
# replica and keeps it there, where its audio is cached.
ROUTER_POLICY = "sticky_least_loaded"


def vllm_router_command(
    workers: list[str], port: int, policy: str = ROUTER_POLICY, *extra: str
) -> list[str]:
    """`vllm-router` (PyPI's vllm-router) on loopback, its Prometheus exporter on a free port
    (two routers on one host would collide on the default)."""
    return [
        *(sys.executable, "-m", "vllm_router.launch_router"),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--worker-urls", *workers, "--policy", policy),
        *("--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port())),
        *("--health-check-endpoint", "/health"),
        *extra,
    ]


def launch_vllm_router(
    workers: list[str], log: Path, policy: str = ROUTER_POLICY, *extra: str
) -> Server:
    return launch(vllm_router_command(workers, free_port(), policy, *extra), log)


def metric_total(text: str, name: str) -> float:
    """A Prometheus metric's value in `/metrics` text (`name 1.0` or `name{...} 1.0`),
    summed over its label sets (one per engine); 0 where it is absent."""
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def run_af3_bench(*args: str) -> dict[str, Any]:
    """`af3-bench` with `args` (which name its --out-dir) in a process of its own, from
    this Python; its summary.json."""
    subprocess.run([sys.executable, "-m", "af3_bench", *args], check=True)
    out_dir = Path(args[args.index("--out-dir") + 1])
    return json.loads((out_dir / "summary.json").read_text())


# Checkpoints and model code ------------------------------------------------------------


def bench_checkpoint(
    preset: str = "bench", folder: Path = CHECKPOINTS, family: str = "af3"
) -> Path:
    """`folder/preset` (other families: `folder/<family>-<preset>`): a random-weight
    checkpoint of that family (`af3-tiny-checkpoint --family`) and preset, built on first use."""
    checkpoint = folder / (preset if family == "af3" else f"{family}-{preset}")
    if not (checkpoint / "model.safetensors").exists():
        from af3_model_executor.testing.tiny_checkpoint import build_checkpoint

        build_checkpoint(checkpoint, preset, family=family)
    return checkpoint


# Timing --------------------------------------------------------------------------------


def time_it(
    run: Callable[..., object],
    repeats: int = 5,
    *,
    setup: Callable[[], object] | None = None,
    stat: str = "median",
    warmup: int = 1,
) -> float:
    """Seconds one call of `run` takes: `warmup` untimed calls, then `repeats` timed ones,
    of which the median (`stat="median"`) or the fastest (`stat="min"`). With `setup`, every
    call is `run(setup())`, the value made before the clock starts (fresh input each time);
    else `run()`. Where torch has started CUDA, the clock waits for the device's work."""
    reduce = {"median": statistics.median, "min": min}[stat]

    def call() -> float:
        value = () if setup is None else (setup(),)
        _synchronize()
        start = time.perf_counter()
        run(*value)
        _synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        call()
    return reduce([call() for _ in range(repeats)])


def _synchronize() -> None:
    torch = sys.modules.get("torch")  # only a script that uses torch has imported it
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# Audio ---------------------------------------------------------------------------------

# 30 s of real conversational speech (16 kHz mono, 16-bit) ships in the pyannote-audio
# wheel: downloaded (not installed) once, into the folder where the tests keep it too.
SPEECH_WHEEL = "pyannote-audio==4.0.7"
SPEECH_WAV = ROOT / ".cache" / "tests" / "pyannote-sample.wav"


def speech_sample() -> np.ndarray:
    """The 30-s real speech sample as float32 samples at 16 kHz."""
    if not SPEECH_WAV.exists():
        wheels = SPEECH_WAV.parent / "wheels"
        download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
        try:
            subprocess.run([*download, SPEECH_WHEEL, "-d", str(wheels)], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise RuntimeError(
                f"the speech sample needs `pip download {SPEECH_WHEEL}`, which failed; "
                f"offline, copy {SPEECH_WAV.relative_to(ROOT)} from a checkout that has it"
            ) from exc
        wheel = next(wheels.glob("pyannote_audio-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            SPEECH_WAV.write_bytes(zf.read("pyannote/audio/sample/sample.wav"))
    with wave.open(str(SPEECH_WAV)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, SAMPLE_RATE)
        pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2")
    return pcm.astype(np.float32) / 32768


def speech_clip(seconds: float, seed: int = 0, sample: np.ndarray | None = None) -> np.ndarray:
    """Real speech of any length: the sample again and again, each 30-s stretch shifted and
    scaled differently so that no two windows are alike. Clips of different `seed`s are
    shifted differently throughout, so no cache keyed on the samples mistakes one for
    another; seed 0 gives the tests' `make_clip`."""
    sample = speech_sample() if sample is None else sample
    n = int(round(seconds * SAMPLE_RATE))
    parts, i = [], 0
    while sum(p.size for p in parts) < n:
        parts.append(np.roll(sample, 7919 * i + 104729 * seed) * (1.0 - 0.03 * i))
        i += 1
    return np.concatenate(parts)[:n].astype(np.float32)


def wav_bytes(audio: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """A mono 16-bit PCM WAV file (16 kHz unless `rate`) of float samples in [-1, 1]."""
    import io

    pcm = np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return buffer.getvalue()


# Results -------------------------------------------------------------------------------


def out_path(doc: str) -> Path:
    """The `--out` result file of a script that takes nothing else; its docstring is the help."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="result JSON file")
    return parser.parse_args().out


def command_line() -> str:
    """This process's command line as typed, interpreter included."""
    return shlex.join(sys.orig_argv)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"


def write_result(path: Path, result: dict[str, Any], shown: object = None) -> None:
    """The result as indented JSON to `path`; to stdout too, or `shown` instead (text as
    it is, anything else as JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        shown
        if isinstance(shown, str)
        else json.dumps(result if shown is None else shown, indent=2)
    )
