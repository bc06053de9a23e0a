"""/v1/realtime: many transcription sessions at once, and the REST latency beside them.

`--sessions` transcription sessions open one after another over `--stagger` seconds; each
streams `--turns` turns of `--turn-seconds` of real speech at real time (24-kHz PCM16 in
100-ms appends), each followed by `--gap-seconds` of silence, the client committing right
after the speech (`--turn-detection none`) or the server's VAD (`server_vad`), then silence
until every committed turn is transcribed. Checked per session: no error event, every
committed item exactly one `.completed`, the items chained by `previous_item_id` and
their transcripts in that order; recorded per turn: end of speech -> `.completed`
(median/p90/max). Meanwhile a probe every `--probe-every` seconds times two REST requests,
one after the other, each about 5 s of speech of its own, whole (not streamed): a chat
(16 tokens) and a transcription; the same probe alone, before the sessions, is the
baseline.

    python -m benchmarks.realtime_sessions --preset bench --sessions 32 --turns 3 \\
        --turn-seconds 10 --turn-detection none --out realtime_sessions_none.json
"""

import argparse
import asyncio
import os
import time
from typing import Any

import openai

from benchmarks import harness
from benchmarks.harness import MODEL
from benchmarks.realtime_client import (
    CHUNK_S,
    COMMITTED,
    COMPLETED,
    FAILED,
    RATE,
    SILENCE,
    TURN_DETECTION,
    ClientLoad,
    Microphone,
    Stamp,
    add_server_flags,
    check_order,
    configure,
    errors,
    listening,
    pieces,
    rest_chat,
    server_log,
    session_config,
    signed,
    speech_turn,
    start_server,
    tail,
    turn_timing,
    wav,
)
from benchmarks.realtime_client import setup as measured_on

PROBE_SECONDS = 5.0
PROBE_TOKENS = 16


def settled(events: list[Stamp], turns: int) -> bool:
    """Every turn committed, and every committed item transcribed (or failed)."""
    committed = [e.item_id for e in events if e.type == COMMITTED]
    done = {e.item_id for e in events if e.type in (COMPLETED, FAILED)}
    return len(committed) >= turns and all(i in done for i in committed)


async def session(
    client: openai.AsyncOpenAI, index: int, turns: list[list[str]], args: argparse.Namespace
) -> dict[str, Any]:
    """One session's turns, from its place in the stagger; its checks and latencies."""
    await asyncio.sleep(index * args.stagger / max(args.sessions, 1))
    gap = [SILENCE] * round(args.gap_seconds / CHUNK_S)
    config = session_config("transcription", args.turn_detection, 0)
    ends: list[float] = []
    events: list[Stamp] = []
    finished, failure, lag = False, None, 0.0
    try:
        async with (
            client.realtime.connect(model=MODEL, extra_query={"intent": "transcription"}) as conn,
            listening(conn) as events,
        ):
            await configure(conn, events, config)
            mic = Microphone(conn)
            for turn in turns:
                ends.append(await mic.send(turn))
                if args.turn_detection == "none":
                    await conn.input_audio_buffer.commit()
                await mic.send(gap)
            finished = await mic.silence_until(lambda: settled(events, len(turns)), args.timeout)
            lag = mic.lag_s
    except Exception as exc:  # a session that broke is a result, not the end of the run
        failure = f"{type(exc).__name__}: {exc}"
    timings = [turn_timing(events, end) for end in ends]
    return {
        "session": index,
        "turns_spoken": len(ends),
        "eos_to_completed_s": [t["transcription_completed"] for t in timings],
        "eos_to_speech_stopped_s": [t["speech_stopped"] for t in timings],
        **check_order(events),
        "errors": errors(events),
        "timed_out": not finished and failure is None,
        "failure": failure,
        "client_send_lag_max_s": round(lag, 4),
    }


async def probe(client: openai.AsyncOpenAI, seed: int, start: float) -> dict[str, float]:
    """A whole chat about 5 s of speech, then a whole transcription of another 5 s."""
    audio = [wav(signed(speech_turn(PROBE_SECONDS, s), s)) for s in (seed, seed + 1)]
    at = time.perf_counter() - start
    chat = await rest_chat(client, audio[0], PROBE_TOKENS, None, stream=False)
    t0 = time.perf_counter()
    await client.audio.transcriptions.create(model=MODEL, file=("probe.wav", audio[1]))
    transcription = time.perf_counter() - t0
    return {
        "at_s": round(at, 2),
        "chat_s": round(chat, 4),
        "transcription_s": round(transcription, 4),
    }


async def probing(
    client: openai.AsyncOpenAI, every: float, stop: asyncio.Event, count: int | None, seed: int
) -> list[dict[str, float]]:
    """A probe every `every` seconds until `stop` is set (or `count` probes)."""
    out: list[dict[str, float]] = []
    start = time.perf_counter()
    while not stop.is_set() and (count is None or len(out) < count):
        began = time.perf_counter()
        out.append(await probe(client, seed + 2 * len(out), start))
        pause = every - (time.perf_counter() - began)
        if pause > 0:
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except TimeoutError:
                pass
    return out


def probe_summary(probes: list[dict[str, float]]) -> dict[str, Any]:
    return {kind: tail([p[kind] for p in probes]) for kind in ("chat_s", "transcription_s")}


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    client = openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=args.timeout
    )
    never = asyncio.Event()
    await probing(client, 0, never, 1, seed=10**6)  # warm-up, not kept
    warm = [pieces(signed(speech_turn(3.0, 10**6), 1))]
    await session(client, 0, warm, args)  # the first session opens at once
    baseline = await probing(client, args.baseline_every, never, args.baseline_probes, 2 * 10**6)
    # Every session's audio is made before any clock starts.
    speech = [
        [pieces(speech_turn(args.turn_seconds, 1 + s * args.turns + k)) for k in range(args.turns)]
        for s in range(args.sessions)
    ]
    stop = asyncio.Event()
    prober = asyncio.create_task(probing(client, args.probe_every, stop, None, 3 * 10**6))
    load = ClientLoad()
    t0 = time.perf_counter()
    sessions = await asyncio.gather(
        *(session(client, i, turns, args) for i, turns in enumerate(speech))
    )
    wall = time.perf_counter() - t0
    client_cpu = load.share()
    stop.set()
    # A probe that began after the last session ended measured nothing of them.
    during = [p for p in await prober if p["at_s"] < wall]
    await client.close()

    def every(key: str) -> list[float]:
        return [x for s in sessions for x in s[key] if x is not None]

    checks = ("missing", "repeated", "unknown", "out_of_order")
    return {
        "sessions_wall_s": round(wall, 1),
        "client_cpu_share": client_cpu,
        "client_send_lag_max_s": max(s["client_send_lag_max_s"] for s in sessions),
        "checks": {
            "sessions_with_errors": sum(bool(s["errors"]) for s in sessions),
            "sessions_failed": sum(s["failure"] is not None for s in sessions),
            "sessions_timed_out": sum(s["timed_out"] for s in sessions),
            "turns_spoken": sum(s["turns_spoken"] for s in sessions),
            "items_committed": sum(s["committed"] for s in sessions),
            "items_completed": sum(s["completed"] for s in sessions),
            "chains_broken": sum(not s["chain_ok"] for s in sessions),
            **{check: sum(s[check] for s in sessions) for check in checks},
            "turns_without_completed": sum(
                x is None for s in sessions for x in s["eos_to_completed_s"]
            ),
        },
        "eos_to_completed_s": tail(every("eos_to_completed_s")),
        **(
            {"eos_to_speech_stopped_s": tail(every("eos_to_speech_stopped_s"))}
            if args.turn_detection == "server_vad"
            else {}
        ),
        "probe_alone": probe_summary(baseline),
        "probe_during_sessions": probe_summary(during),
        "probes": {"alone": baseline, "during_sessions": during},
        "sessions": sessions,
    }


def main() -> None:
    parser = harness.script_parser(__doc__, "result JSON file")
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--turns", type=int, default=3, help="per session")
    parser.add_argument("--turn-seconds", type=float, default=10.0, help="speech per turn")
    parser.add_argument("--gap-seconds", type=float, default=2.0, help="silence after a turn")
    parser.add_argument(
        "--stagger", type=float, default=12.0, help="seconds over which the sessions open"
    )
    parser.add_argument("--turn-detection", choices=TURN_DETECTION, default="none")
    parser.add_argument("--probe-every", type=float, default=5.0, help="seconds, during")
    parser.add_argument("--baseline-probes", type=int, default=5, help="probes alone, first")
    parser.add_argument("--baseline-every", type=float, default=1.0, help="seconds, alone")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a request may take")
    add_server_flags(parser)
    args = parser.parse_args()
    limits = ("--max-realtime-sessions-per-key", str(args.sessions + 1))
    limits += ("--max-realtime-sessions", str(max(64, args.sessions + 1)))
    with start_server(args, server_log(args.out), *limits) as server:
        result = measured_on(args, server)
        result["workload"] = {
            "sessions": args.sessions,
            "turns": args.turns,
            "turn_s": args.turn_seconds,
            "gap_s": args.gap_seconds,
            "stagger_s": args.stagger,
            "turn_detection": args.turn_detection,
            "audio": f"real speech, PCM16 at {RATE} Hz, 100-ms appends at real time",
            "probe": f"{PROBE_SECONDS:g}-s chat ({PROBE_TOKENS} tokens) then {PROBE_SECONDS:g}-s "
            f"transcription, whole; every {args.probe_every:g} s during the sessions, "
            f"{args.baseline_probes} alone before",
        }
        result |= asyncio.run(measure(server.url, args))
    result["load_average_at_end"] = os.getloadavg()
    shown = {k: v for k, v in result.items() if k not in ("probes", "sessions", "server_command")}
    harness.write_result(args.out, result, shown=shown)


if __name__ == "__main__":
    main()
