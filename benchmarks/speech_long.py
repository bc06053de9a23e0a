"""Long transcriptions on a real af3-serve (CPU build, `tiny` random-weight checkpoint).

`cpu`: the API process's CPU per 10-min transcription (590 s of the tests' real speech, so
af3-serve before voice activity takes it too), idle rate subtracted; with voice activity
also the detector's worker processes' CPU. Run it with each tree on PYTHONPATH to compare.

`hours`: one espeak-ng meeting of `--hours` (pauses 0.35-0.9 s, a 40-s silence every 3 min)
as a 16-kHz FLAC: a short chat request's TTFT alone and while the transcription runs
(streamed), the transcription's wall time and RTFx, the API process's peak RSS; the same
file whole (verbose_json), its segments scored against the known speech; then four such
files at once until each is decoded, detected and in the engine (peak RSS), and closed.

    python -m benchmarks.speech_long cpu --out benchmarks/results/speech_api_cpu.json
    cd BASE_TREE && PYTHONPATH=$OLDPWD python $OLDPWD/benchmarks/speech_long.py cpu \
        --server-pythonpath BASE_TREE --out $OLDPWD/benchmarks/results/speech_api_cpu_before.json

(the server runs `python -m af3_serve.cli`, which finds af3_serve in its working folder
before PYTHONPATH: another tree's server runs from that tree's folder.)
    python -m benchmarks.speech_long hours --hours 3 --out benchmarks/results/speech_3h_cpu.json
"""

import argparse
import base64
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import soundfile as sf

from benchmarks import harness
from benchmarks.harness import ENGINE, MODEL, SAMPLE_RATE, Server
from benchmarks.spoken import meeting, score_plan

KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TRANSCRIPTIONS = "/v1/audio/transcriptions"


def start(log: Path, *extra: str, pythonpath: str | None = None) -> Server:
    """af3-serve on the tiny checkpoint; `pythonpath`: another tree's af3_serve (a base
    commit's, to compare)."""
    checkpoint = harness.bench_checkpoint("tiny")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    server = harness.launch_af3_serve(
        checkpoint,
        log,
        *("--api-key", KEY, "--served-model-name", MODEL, *ENGINE, "--no-demo-page", *extra),
        env=env,
    )
    return server.wait_healthy(timeout_s=600)


def vad_workers(server: Server) -> list[psutil.Process]:
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [p for p in children if "af3_serve.inputs.vad" in " ".join(p.cmdline())]


def cpu_of(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def transcribe(server: Server, path: Path, stream: bool = False) -> dict[str, Any]:
    with path.open("rb") as f:
        response = httpx.post(
            server.url + TRANSCRIPTIONS,
            headers=AUTH,
            data={"model": MODEL, "response_format": "verbose_json", "stream": str(stream)},
            files={"file": (path.name, f)},
            timeout=7200,
        )
    response.raise_for_status()
    return response.json() if not stream else {"events": response.text}


def short_ttft(server: Server, clip: str) -> float:
    """A 5-s chat request, streamed: seconds to its first token."""
    body = {
        "model": MODEL,
        "max_tokens": 4,
        "stream": True,
        "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": clip}]}],
    }
    start = time.perf_counter()
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", headers=AUTH, json=body, timeout=600
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"]:
                return time.perf_counter() - start
    raise RuntimeError("no token")


@contextlib.contextmanager
def streamed_transcription(server: Server, path: Path) -> Iterator[httpx.Response]:
    """A file sent to the transcription endpoint with `stream=true`, its events to read."""
    with (
        path.open("rb") as f,
        httpx.stream(
            "POST",
            server.url + TRANSCRIPTIONS,
            headers=AUTH,
            data={"model": MODEL, "stream": "true"},
            files={"file": (path.name, f)},
            timeout=7200,
        ) as response,
    ):
        yield response


def cpu(args: argparse.Namespace) -> dict[str, Any]:
    audio = harness.speech_clip(590.0)
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "speech-590s.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    with start(tmp / "server.log", pythonpath=args.server_pythonpath) as server:
        api = psutil.Process(server.process.pid)
        transcribe(server, path)  # warm-up (and the detector's workers started)
        idle_t, idle_cpu = time.perf_counter(), cpu_of([api])
        time.sleep(10)
        idle_rate = (cpu_of([api]) - idle_cpu) / (time.perf_counter() - idle_t)
        rows = []
        for _ in range(args.repeats):
            t0, c0, v0 = time.perf_counter(), cpu_of([api]), cpu_of(vad_workers(server))
            result = transcribe(server, path)
            wall = time.perf_counter() - t0
            api_cpu = cpu_of([api]) - c0
            rows.append(
                {
                    "wall_s": round(wall, 2),
                    "api_cpu_s": round(api_cpu, 3),
                    "api_cpu_minus_idle_s": round(api_cpu - idle_rate * wall, 3),
                    "vad_workers_cpu_s": round(cpu_of(vad_workers(server)) - v0, 3),
                    "segments": len(result["segments"]),
                }
            )
    return {
        "audio_s": 590.0,
        "idle_api_cpu_per_s": round(idle_rate, 4),
        "runs": rows,
        "median_api_cpu_minus_idle_s": statistics.median(r["api_cpu_minus_idle_s"] for r in rows),
        "median_vad_workers_cpu_s": statistics.median(r["vad_workers_cpu_s"] for r in rows),
    }


class PeakRSS(threading.Thread):
    def __init__(self, process: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.process, self.peak, self.done = process, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)

    def stop(self) -> float:
        self.done.set()
        self.join()
        return round(self.peak / 2**20, 1)


def hours(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.hours * 3600
    tmp = Path(tempfile.mkdtemp())
    recording = meeting(seconds - 30)
    path = tmp / "meeting.flac"
    sf.write(path, recording.audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    speech, samples = recording.speech, recording.audio.size
    del recording
    wav = base64.b64encode(harness.wav_bytes(harness.speech_clip(5.0))).decode()
    clip = {"data": wav, "format": "wav"}
    flags = ["--max-queued-audio-seconds", str(5 * seconds)]
    flags += ["--max-transcription-seconds", str(seconds)]
    result: dict[str, Any] = {"file_mib": round(path.stat().st_size / 2**20, 1)}
    with start(tmp / "server.log", *flags) as server:
        api = psutil.Process(server.process.pid)
        short_ttft(server, clip)  # warm-up
        alone = [short_ttft(server, clip) for _ in range(5)]
        result["idle_api_rss_mib"] = round(api.memory_info().rss / 2**20, 1)
        peak = PeakRSS(api)
        peak.start()
        during: list[float] = []
        done = threading.Event()
        timing: dict[str, Any] = {}

        def long_one() -> None:
            t0 = time.perf_counter()
            first = None
            with streamed_transcription(server, path) as response:
                for line in response.iter_lines():
                    if line.startswith("data: ") and first is None:
                        first = time.perf_counter() - t0
                    if '"transcript.text.done"' in line:
                        timing["text_chars"] = len(json.loads(line[6:])["text"])
            timing["first_delta_s"], timing["wall_s"] = first, time.perf_counter() - t0
            done.set()

        worker = threading.Thread(target=long_one)
        worker.start()
        while not done.is_set():
            time.sleep(5)
            if not done.is_set():
                during.append(short_ttft(server, clip))
        worker.join()
        result["api_peak_rss_mib_one"] = peak.stop()
        result["transcription"] = {
            "audio_s": round(sf.info(path).duration, 1),
            "first_delta_s": round(timing["first_delta_s"], 1),
            "wall_s": round(timing["wall_s"], 1),
            "rtfx": round(sf.info(path).duration / timing["wall_s"], 1),
            "text_chars": timing.get("text_chars"),
        }
        result["short_request_ttft_s"] = {
            "alone_median": round(statistics.median(alone), 3),
            "during_median": round(statistics.median(during), 3) if during else None,
            "during_max": round(max(during), 3) if during else None,
            "during_samples": len(during),
        }
        # The same file whole (verbose_json): its segments against the known speech.
        t0 = time.perf_counter()
        whole = transcribe(server, path)
        wall = time.perf_counter() - t0
        windows = [
            (round(x["start"] * SAMPLE_RATE), round(x["end"] * SAMPLE_RATE))
            for x in whole["segments"]
        ]
        score = score_plan(windows, speech, samples)
        result["whole"] = {
            "wall_s": round(wall, 1),
            "rtfx": round(whole["duration"] / wall, 1),
            "segments": score.windows,
            "cuts_in_speech": score.cuts_in_speech,
            "speech_covered": round(score.speech_covered, 4),
            "speech_share": round(score.speech_share, 4),
            "longest_pause_sent_s": round(score.longest_pause_sent_s, 2),
            "sentences": len(speech),
        }
        # Four at once: each decoded, detected and in the engine, then closed.
        peak = PeakRSS(api)
        peak.start()
        started = threading.Barrier(5, timeout=3600)

        def until_first_delta() -> None:
            with streamed_transcription(server, path) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        break
            started.wait()

        t0 = time.perf_counter()
        four = [threading.Thread(target=until_first_delta) for _ in range(4)]
        for t in four:
            t.start()
        started.wait()
        result["four_at_once"] = {
            "all_in_engine_after_s": round(time.perf_counter() - t0, 1),
            "api_peak_rss_mib": peak.stop(),
        }
        for t in four:
            t.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["cpu", "hours"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server-pythonpath", help="run the server from this tree (cpu)")
    args = parser.parse_args()
    result = {
        "command": harness.command_line(),
        "machine": harness.machine(),
        "build": "vLLM 0.32.0 CPU build, torch 2.13.0+cpu, tiny random-weight checkpoint",
        "server_pythonpath": args.server_pythonpath,
        **(cpu(args) if args.what == "cpu" else hours(args)),
    }
    harness.write_result(args.out, result)


if __name__ == "__main__":
    main()
