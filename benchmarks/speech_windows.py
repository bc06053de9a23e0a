"""Where a transcription's windows fall: fixed 30-s windows (af3-serve before voice activity),
vLLM's `split_audio` (the quietest 100 ms in the last second of each 30 s, as `vllm serve`
cuts Whisper's audio) and af3-serve's plan (Silero VAD, windows of at most 30 s cut at
pauses, silence not sent), on recordings whose speech is known: espeak-ng meetings (pauses
0.35-0.9 s, a 40-s silence every 3 min) and the tests' real 30-s conversation repeated
after 10 s of silence (its annotated speaker turns as the speech).

For each: cuts inside speech, the share of the speech covered, the share of engine audio
that is speech, the longest pause sent, the plan's CPU time (one thread) and, with
--engine, the transcription's RTFx through vLLM's offline engine with our model (the
`tiny` random-weight checkpoint, CPU, a fixed 16 tokens a window so only the audio sent
differs between plans).

    python -m benchmarks.speech_windows --out benchmarks/results/speech_windows_cpu.json [--engine]
"""

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import SAMPLE_RATE, command_line, machine, write_result
from benchmarks.spoken import Recording, meeting, real_speech, score_plan

WINDOW = 30 * SAMPLE_RATE


def fixed_windows(n: int) -> list[tuple[int, int]]:
    """af3-serve before: 30-s windows, a last piece under 1 s riding with the one before."""
    bounds = [(s, min(s + WINDOW, n)) for s in range(0, n, WINDOW)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < SAMPLE_RATE:
        bounds[-2:] = [(bounds[-2][0], bounds[-1][1])]
    return bounds


def vllm_windows(audio: np.ndarray) -> list[tuple[int, int]]:
    """vLLM's `split_audio` with the settings its speech-to-text serving uses for Whisper."""
    from vllm.multimodal.audio import split_audio

    chunks = split_audio(audio, SAMPLE_RATE, 30.0, 1.0, 1600)
    bounds, at = [], 0
    for chunk in chunks:
        bounds.append((at, at + chunk.size))
        at += chunk.size
    return bounds


def our_windows(pcm: np.ndarray) -> list[tuple[int, int]]:
    from af3_serve.speech.segmentation import speech_windows

    return [(w.start, w.end) for w in speech_windows(pcm)]


def plans(recording: Recording) -> dict[str, tuple[list[tuple[int, int]], float]]:
    """Each plan's windows and its CPU seconds (this thread)."""
    pcm = np.clip(np.rint(recording.audio * 32768), -32768, 32767).astype(np.int16)
    out = {}
    for name, plan in (
        ("fixed_30s", lambda: fixed_windows(pcm.size)),
        ("vllm_split_audio", lambda: vllm_windows(recording.audio)),
        ("af3_serve_vad", lambda: our_windows(pcm)),
    ):
        start = time.thread_time()
        windows = plan()
        out[name] = (windows, time.thread_time() - start)
    return out


def engine_seconds(llm: Any, prompt: str, audio: np.ndarray, windows: list) -> float:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=16, ignore_eos=True, temperature=0)
    requests = [
        {"prompt": prompt, "multi_modal_data": {"audio": [(audio[a:b], SAMPLE_RATE)]}}
        for a, b in windows
    ]
    start = time.perf_counter()
    llm.generate(requests, params, use_tqdm=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--engine", action="store_true", help="also transcribe (RTFx)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[570.0, 2700.0])
    args = parser.parse_args()
    recordings = {f"espeak_meeting_{s:g}s": meeting(s) for s in args.seconds}
    # 10 s of silence first: the copies of the 30-s sample then join off the 30-s grid.
    recordings[f"real_speech_repeated_{args.seconds[0]:g}s"] = real_speech(args.seconds[0], 10.0)
    llm = prompt = None
    if args.engine:
        # vLLM's CPU build otherwise reserves most of the machine's memory for its KV cache.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from transformers import AutoTokenizer
        from vllm import LLM

        from af3_serve.engine import offline_engine_kwargs
        from benchmarks.harness import bench_checkpoint

        checkpoint = bench_checkpoint("tiny")
        llm = LLM(**offline_engine_kwargs(checkpoint, dtype="float32"))
        content = [{"type": "audio"}, {"type": "text", "text": "Transcribe the input speech."}]
        prompt = AutoTokenizer.from_pretrained(checkpoint).apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    result: dict[str, Any] = {
        "command": command_line(),
        "machine": machine(),
        "build": "vLLM 0.32.0 CPU build, torch 2.13.0+cpu, silero-vad 6.2.3 on onnxruntime 1.32.0",
        "recordings": {},
    }
    for name, recording in recordings.items():
        entry: dict[str, Any] = {
            "seconds": round(recording.seconds, 1),
            "speech_seconds": round(sum(b - a for a, b in recording.speech) / SAMPLE_RATE, 1),
            "sentences_or_turns": len(recording.speech),
            "plans": {},
        }
        for plan, (windows, cpu_s) in plans(recording).items():
            score = score_plan(windows, recording.speech, recording.audio.size)
            row = {
                "windows": score.windows,
                "cuts": score.cuts,
                "cuts_in_speech": score.cuts_in_speech,
                "speech_covered": round(score.speech_covered, 4),
                "engine_audio_that_is_speech": round(score.speech_share, 4),
                "engine_audio_s": round(score.engine_seconds, 1),
                "longest_pause_sent_s": round(score.longest_pause_sent_s, 2),
                "plan_cpu_s": round(cpu_s, 2),
                "plan_rtfx": round(recording.seconds / max(cpu_s, 1e-9), 1),
            }
            if llm is not None:
                engine_s = engine_seconds(llm, prompt, recording.audio, windows)
                row["engine_s"] = round(engine_s, 2)
                row["rtfx"] = round(recording.seconds / (engine_s + cpu_s), 1)
            entry["plans"][plan] = row
        result["recordings"][name] = entry
    write_result(args.out, result)


if __name__ == "__main__":
    main()
