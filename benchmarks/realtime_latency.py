"""/v1/realtime: end of speech to the transcript and to the first answer token, against REST.

The same audio sent by REST once the speech ended is the baseline, in the same run on the
same af3-serve.

Turns of `--turns` seconds of real speech, each streamed at real time (24-kHz PCM16 in
100-ms appends, paced by the wall clock) into a new session of each kind, then silence at
real time until the turn is answered:

- `transcription`: a transcription session (`intent=transcription`);
- `conversation`: a `realtime` session that transcribes its input too and answers in text.

`--turn-detection none`: the client sends `input_audio_buffer.commit` (and `response.create`
in a conversation) right after the last speech sample. `server_vad`: the session's turn
detection is server_vad (500 ms of silence, `create_response`), and the server commits and
answers by itself. Times run from the end of speech, the moment the last speech sample was
sent, to `input_audio_buffer.speech_stopped`, the turn's first transcription delta
(negative: before the speaker finished), its `.completed`, and the response's first
`response.output_text.delta`. The REST cell sends the same speech (an inaudible dither of
its own, so no cache is shared) as one 24-kHz WAV file at once and times it from sending:
a transcription, streamed (first delta, done), for the transcription cell; a streamed chat
with the session's conversation (instructions and the audio; time to the first content
token) and the transcription beside it, for the conversation cell. A conversation's answer
also reports its input tokens and those the prefix cache held (`answer_cached_tokens`: an AF3
turn's windows prefilled while it was spoken, and the instructions). Realtime and REST
cells alternate in order from round to round; each cell is reported as median/min/max.

    python -m benchmarks.realtime_latency --preset bench --turns 5,30,90 --rounds 3 \\
        --turn-detection none --out realtime_latency_none.json
"""

import argparse
import asyncio
import os
from typing import Any

import numpy as np
import openai

from benchmarks import harness
from benchmarks.harness import MODEL
from benchmarks.realtime_client import (
    INSTRUCTIONS,
    RATE,
    TURN_DETECTION,
    ClientLoad,
    Microphone,
    add_server_flags,
    configure,
    errors,
    listening,
    pieces,
    rest_chat,
    rest_transcription,
    server_log,
    session_config,
    signed,
    speech_turn,
    spread,
    start_server,
    turn_timing,
    wav,
)
from benchmarks.realtime_client import setup as measured_on

KINDS = ("transcription", "conversation")
MEASURES = {
    ("realtime", "transcription"): (
        "speech_stopped",
        "first_transcription_delta",
        "transcription_completed",
    ),
    ("realtime", "conversation"): (
        "speech_stopped",
        "first_transcription_delta",
        "transcription_completed",
        "first_text_delta",
        "response_done",
        "answer_input_tokens",
        "answer_cached_tokens",
    ),
    ("rest", "transcription"): ("first_transcription_delta", "transcription_completed"),
    ("rest", "conversation"): (
        "first_transcription_delta",
        "transcription_completed",
        "first_text_delta",
    ),
}


def answered(timing: dict[str, Any], kind: str, late_error: bool) -> bool:
    """Whether a realtime turn is over: transcribed (or failed), and in a conversation
    answered too, or refused (an error event after the speech)."""
    transcribed = timing["transcription_completed"] is not None
    transcribed = transcribed or timing["transcription_failed"] is not None
    if kind == "transcription":
        return transcribed or (late_error and timing["item_id"] is None)
    return (transcribed and (timing["response_done"] is not None or late_error)) or (
        late_error and timing["item_id"] is None
    )


async def realtime_cell(
    client: openai.AsyncOpenAI, kind: str, pcm: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """One turn into a new session; its times from the end of speech."""
    intent = {"intent": "transcription"} if kind == "transcription" else {}
    config = session_config(kind, args.turn_detection, args.max_output_tokens)
    async with (
        client.realtime.connect(model=MODEL, extra_query=intent) as conn,
        listening(conn) as events,
    ):
        await configure(conn, events, config)
        mic = Microphone(conn)
        end = await mic.send(pieces(pcm))
        if args.turn_detection == "none":
            await conn.input_audio_buffer.commit()
            if kind == "conversation":
                await conn.response.create()

        def over() -> bool:
            late_error = any(e.type == "error" and e.t >= end for e in events)
            return answered(turn_timing(events, end), kind, late_error)

        finished = await mic.silence_until(over, args.timeout)
    return {
        **turn_timing(events, end),
        "committed_items": sum(e.type == "input_audio_buffer.committed" for e in events),
        "timed_out": not finished,
        "errors": errors(events),
        "client_send_lag_max_s": round(mic.lag_s, 4),
    }


async def rest_cell(
    client: openai.AsyncOpenAI, kind: str, pcm: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """The turn's audio by REST, sent at once; times from sending."""
    audio = wav(pcm)
    if kind == "transcription":
        transcription = await rest_transcription(client, audio)
        chat = None
    else:
        chat, transcription = await asyncio.gather(
            rest_chat(client, audio, args.max_output_tokens, INSTRUCTIONS),
            rest_transcription(client, audio),
        )
    first = transcription["first_delta_s"]
    return {
        "first_transcription_delta": None if first is None else round(first, 4),
        "transcription_completed": round(transcription["done_s"], 4),
        "first_text_delta": None if chat is None else round(chat, 4),
    }


async def cells(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """A warm-up turn of each kind each way (not kept), then every (turn length, round,
    kind) realtime and by REST, in alternating order."""
    client = openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=args.timeout
    )
    warm = speech_turn(3.0, seed=10**6)
    for i, kind in enumerate(args.kinds):
        await realtime_cell(client, kind, signed(warm, 2 * i), args)
        await rest_cell(client, kind, signed(warm, 2 * i + 1), args)
    out = []
    seed = 0
    for seconds in args.turns:
        for r in range(args.rounds):
            for k, kind in enumerate(args.kinds):
                seed += 1
                pcm = speech_turn(seconds, seed)
                ways = ("realtime", "rest") if (r + k) % 2 == 0 else ("rest", "realtime")
                for way in ways:
                    run = realtime_cell if way == "realtime" else rest_cell
                    audio = signed(pcm, 2 * seed + (way == "rest"))
                    cell = {"turn_s": seconds, "round": r, "kind": kind, "way": way}
                    try:
                        cell |= await run(client, kind, audio, args)
                    except Exception as exc:  # kept as a result; the run goes on
                        cell["failure"] = f"{type(exc).__name__}: {exc}"
                    print(cell, flush=True)
                    out.append(cell)
    await client.close()
    return out


def summarize(results: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per turn length and kind, realtime and REST side by side: median/min/max of each
    time (`speech_stopped` with server_vad only), and the realtime turns that timed out or
    saw errors."""
    skip = {"speech_stopped"} if args.turn_detection == "none" else set()
    rows = []
    for seconds in args.turns:
        for kind in args.kinds:
            row: dict[str, Any] = {"turn_s": seconds, "kind": kind}
            for way in ("realtime", "rest"):
                mine = [
                    c for c in results if (c["turn_s"], c["kind"], c["way"]) == (seconds, kind, way)
                ]
                measures = [m for m in MEASURES[way, kind] if m not in skip]
                row[way] = {m: spread([c.get(m) for c in mine]) for m in measures}
                row[way]["failed"] = sum("failure" in c for c in mine)
                if way == "realtime":
                    row[way]["timed_out"] = sum(c.get("timed_out", False) for c in mine)
                    row[way]["with_errors"] = sum(bool(c.get("errors")) for c in mine)
            rows.append(row)
    return rows


def main() -> None:
    parser = harness.script_parser(__doc__, "result JSON file")
    parser.add_argument(
        "--turns", default="5,30,90", help="speech per turn, seconds, comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=3, help="turns per length and kind")
    parser.add_argument("--kinds", default=",".join(KINDS), help="sessions, comma-separated")
    parser.add_argument("--turn-detection", choices=TURN_DETECTION, default="none")
    parser.add_argument("--max-output-tokens", type=int, default=32, help="conversation answers")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a turn may take")
    add_server_flags(parser)
    args = parser.parse_args()
    args.turns = [float(s) for s in args.turns.split(",")]
    args.kinds = args.kinds.split(",")
    if not set(args.kinds) <= set(KINDS):
        parser.error(f"--kinds: of {', '.join(KINDS)}")
    with start_server(args, server_log(args.out)) as server:
        result = measured_on(args, server)
        result["workload"] = {
            "turns_s": args.turns,
            "rounds": args.rounds,
            "kinds": args.kinds,
            "turn_detection": args.turn_detection,
            "audio": f"real speech, PCM16 at {RATE} Hz, 100-ms appends at real time",
            "instructions": INSTRUCTIONS,
            "max_output_tokens": args.max_output_tokens,
        }
        load = ClientLoad()
        results = asyncio.run(cells(server.url, args))
        result["client_cpu_share"] = load.share()
    result["load_average_at_end"] = os.getloadavg()
    result["summary"] = summarize(results, args)
    longest = [
        c.get("first_transcription_delta")
        for c in results
        if c["way"] == "realtime" and c["turn_s"] == max(args.turns)
    ]
    result["longest_turn_first_transcription_delta"] = spread(longest)
    result["cells"] = results
    harness.write_result(args.out, result, shown=result["summary"])


if __name__ == "__main__":
    main()
