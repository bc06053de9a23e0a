"""The realtime benchmarks' pure parts on made-up event streams: a turn's times from the end
of its speech, the transcription sessions' order and count checks, the statistics, and the
audio a client sends (no server, no clock)."""

import base64

import numpy as np
from openai.types.realtime.realtime_server_event import RealtimeServerEvent
from pydantic import TypeAdapter

from benchmarks.realtime_client import (
    CHUNK_S,
    COMMITTED,
    COMPLETED,
    RATE,
    RESPONSE_CREATED,
    RESPONSE_DONE,
    SPEECH_STOPPED,
    TEXT_DELTA,
    TRANSCRIPT_DELTA,
    Stamp,
    check_order,
    errors,
    pieces,
    signed,
    spread,
    stamp,
    tail,
    turn_timing,
)
from benchmarks.realtime_latency import answered
from benchmarks.realtime_sessions import settled

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)


def committed(t: float, item: str, previous: str | None) -> Stamp:
    return Stamp(t, COMMITTED, item, previous)


def test_turn_timing_follows_the_turn_committed_after_the_speech() -> None:
    events = [
        # An earlier turn, and its response still talking after this turn's speech ended.
        committed(1.0, "a", None),
        Stamp(1.1, RESPONSE_CREATED, response_id="r0"),
        Stamp(9.0, TRANSCRIPT_DELTA, "b"),  # a finished window, sent while still spoken
        Stamp(10.1, TEXT_DELTA, response_id="r0"),
        Stamp(10.5, SPEECH_STOPPED, "b"),
        committed(10.5, "b", "a"),
        Stamp(10.6, RESPONSE_CREATED, response_id="r1"),
        Stamp(10.9, TEXT_DELTA, response_id="r1"),
        Stamp(11.0, TRANSCRIPT_DELTA, "b"),
        Stamp(11.5, COMPLETED, "b"),
        Stamp(12.0, RESPONSE_DONE, response_id="r1", tokens=(2300, 1536)),
    ]
    timing = turn_timing(events, end_of_speech=10.0)
    assert timing["item_id"] == "b"
    assert timing["speech_stopped"] == 0.5 and timing["committed"] == 0.5
    assert timing["first_transcription_delta"] == -1.0
    assert timing["transcription_completed"] == 1.5 and timing["transcription_failed"] is None
    assert timing["first_text_delta"] == 0.9 and timing["response_done"] == 2.0
    assert (timing["answer_input_tokens"], timing["answer_cached_tokens"]) == (2300, 1536)
    assert answered(timing, "conversation", late_error=False)


def test_a_response_done_stamp_keeps_its_token_counts() -> None:
    done = SERVER_EVENT.validate_python(
        {
            "type": RESPONSE_DONE,
            "event_id": "e",
            "response": {
                "id": "r1",
                "object": "realtime.response",
                "usage": {
                    "input_tokens": 2300,
                    "output_tokens": 4,
                    "total_tokens": 2304,
                    "input_token_details": {"cached_tokens": 1536},
                },
            },
        }
    )
    assert stamp(done, 1.0).tokens == (2300, 1536)
    unused = done.response.model_copy(update={"usage": None})
    assert stamp(done.model_copy(update={"response": unused}), 1.0).tokens is None


def test_a_turn_not_committed_yet_has_no_times() -> None:
    timing = turn_timing([committed(1.0, "a", None), Stamp(2.0, COMPLETED, "a")], 5.0)
    assert set(timing.values()) == {None}
    assert not answered(timing, "transcription", late_error=False)
    assert answered(timing, "transcription", late_error=True)  # refused: nothing to wait for


def test_a_conversation_turn_waits_for_its_response() -> None:
    events = [committed(5.1, "b", None), Stamp(6.0, COMPLETED, "b")]
    timing = turn_timing(events, 5.0)
    assert answered(timing, "transcription", late_error=False)
    assert not answered(timing, "conversation", late_error=False)
    assert answered(timing, "conversation", late_error=True)


def test_check_order_counts_each_fault() -> None:
    good = [
        committed(1, "a", None),
        committed(2, "b", "a"),
        Stamp(2.5, COMPLETED, "a"),
        committed(3, "c", "b"),
        Stamp(3.5, COMPLETED, "b"),
        Stamp(4.5, COMPLETED, "c"),
    ]
    assert check_order(good) == {
        "committed": 3,
        "completed": 3,
        "chain_ok": True,
        "missing": 0,
        "repeated": 0,
        "unknown": 0,
        "out_of_order": 0,
    }
    bad = [
        committed(1, "a", None),
        committed(2, "b", "x"),  # not chained to a
        committed(3, "c", "b"),
        Stamp(3.5, COMPLETED, "b"),
        Stamp(3.6, COMPLETED, "a"),  # after b's: out of order
        Stamp(3.7, COMPLETED, "a"),  # twice
        Stamp(3.8, COMPLETED, "z"),  # never committed
    ]
    result = check_order(bad)
    assert not result["chain_ok"]
    assert (result["missing"], result["repeated"], result["unknown"]) == (1, 1, 1)
    assert result["out_of_order"] == 1


def test_settled_needs_every_turn_committed_and_transcribed() -> None:
    events = [committed(1, "a", None), Stamp(2, COMPLETED, "a"), committed(3, "b", "a")]
    assert not settled(events, 2)
    assert settled([*events, Stamp(4, COMPLETED, "b")], 2)
    assert not settled([*events, Stamp(4, COMPLETED, "b")], 3)


def test_errors_lists_error_events_and_failed_transcriptions() -> None:
    events = [
        Stamp(1, "error", detail="invalid_value: no"),
        Stamp(2, "conversation.item.input_audio_transcription.failed", "a", detail="x: y"),
        Stamp(3, COMPLETED, "b"),
    ]
    assert errors(events) == [
        "error invalid_value: no",
        "conversation.item.input_audio_transcription.failed x: y",
    ]


def test_statistics() -> None:
    assert spread([3.0, None, 1.0, 2.0]) == {"n": 3, "median": 2.0, "min": 1.0, "max": 3.0}
    assert spread([None]) == {"n": 0, "median": None, "min": None, "max": None}
    assert tail([float(x) for x in range(11)]) == {"n": 11, "median": 5.0, "p90": 9.0, "max": 10.0}
    assert tail([]) == {"n": 0, "median": None, "p90": None, "max": None}


def test_the_audio_sent() -> None:
    pcm = (np.sin(np.arange(int(0.25 * RATE)) / 7) * 20000).astype("<i2")
    chunks = pieces(pcm)
    assert [len(base64.b64decode(c)) for c in chunks] == [2 * int(CHUNK_S * RATE)] * 2 + [2400]
    assert b"".join(base64.b64decode(c) for c in chunks) == pcm.tobytes()
    a, b = signed(pcm, 1), signed(pcm, 2)
    assert np.abs(a.astype(int) - pcm).max() == 1 and np.abs(b.astype(int) - pcm).max() == 1
    assert not np.array_equal(a, b) and np.array_equal(a, signed(pcm, 1))
