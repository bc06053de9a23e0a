"""af3-bench's pure parts on known inputs: statistics, arrival schedules, request bodies,
cache counters; and one pass of conversations against a fake server."""

import base64
import io
import json

import httpx
import numpy as np
import pytest
import soundfile as sf

from af3_bench import runner
from af3_bench.cli import redacted_command
from af3_bench.client import RequestRecord, tpot
from af3_bench.load_shapes import arrival_offsets
from af3_bench.server_metrics import cache_delta, parse_counters, read_counters
from af3_bench.stats import (
    distribution,
    goodput,
    length_bucket,
    per_turn,
    ratios,
    saturation_point,
    summarize,
    ttft_by_audio_length,
)
from af3_bench.workload import FOLLOW_UPS, AudioSource, Workload, draw_lengths, questions


def done(
    audio_s: float, ttft_s: float | None, e2el_s: float, tokens: int = 2, turn: int = 1
) -> RequestRecord:
    return RequestRecord(
        index=0,
        audio_seconds=audio_s,
        turn=turn,
        ok=True,
        status=200,
        ttft_s=ttft_s,
        e2el_s=e2el_s,
        completion_tokens=tokens,
        tpot_s=tpot(e2el_s, ttft_s, tokens),
    )


def failed(status: int | None, turn: int = 1) -> RequestRecord:
    return RequestRecord(index=0, audio_seconds=100.0, turn=turn, status=status, error="boom")


def test_distribution_is_mean_and_linear_percentiles_in_ms() -> None:
    assert distribution([1.0, 2.0, 3.0, 4.0]) == pytest.approx(
        {"mean": 2500.0, "p50": 2500.0, "p90": 3700.0, "p99": 3970.0}
    )
    assert distribution([0.25]) == {"mean": 250.0, "p50": 250.0, "p90": 250.0, "p99": 250.0}
    assert distribution([]) == {"mean": None, "p50": None, "p90": None, "p99": None}


def test_tpot_excludes_the_first_token() -> None:
    assert tpot(1.0, 0.2, 5) == pytest.approx(0.2)
    assert tpot(1.0, 0.2, 1) is None  # one token: no time per output token
    assert tpot(1.0, None, 5) is None  # not streamed: no TTFT


def test_summary_counts_rates_and_errors() -> None:
    records = [
        done(10.0, 0.1, 1.0, tokens=10),
        done(50.0, 0.5, 2.0, tokens=5),
        failed(429),
        failed(None),
        failed(200),  # an error event inside a 200 stream
    ]
    records[0].itl_s = [0.1, 0.3]
    records[0].prompt_tokens, records[0].audio_tokens = 300, 250
    s = summarize(records, duration_s=4.0, unfinished=1)
    assert (s["completed"], s["failed"], s["unfinished"]) == (2, 3, 1)
    assert s["errors_by_status"] == {"429": 1, "no_response": 1, "error_after_200": 1}
    assert s["request_throughput"] == pytest.approx(0.5)
    assert s["rtfx"] == pytest.approx(15.0)  # 60 audio s of completed requests / 4 wall s
    assert s["output_tokens_per_s"] == pytest.approx(3.75)
    assert (s["total_prompt_tokens"], s["total_audio_tokens"]) == (300, 250)
    assert s["goodput"] is None  # no SLO given
    assert s["ttft_ms"] == pytest.approx({"mean": 300.0, "p50": 300.0, "p90": 460.0, "p99": 496.0})
    # TPOT: (1.0 - 0.1) / 9 = 100 ms and (2.0 - 0.5) / 4 = 375 ms
    assert s["tpot_ms"]["mean"] == pytest.approx(237.5)
    assert s["itl_ms"]["mean"] == pytest.approx(200.0)
    assert s["e2el_ms"]["p50"] == pytest.approx(1500.0)


def test_goodput_counts_requests_within_every_given_slo() -> None:
    records = [done(10.0, 0.1, 1.0), done(50.0, 0.5, 2.0), done(5.0, None, 0.5), failed(500)]
    assert goodput(records, 4.0, None, None) is None
    assert goodput(records, 4.0, 200.0, None) == pytest.approx(0.25)  # no TTFT fails a TTFT SLO
    assert goodput(records, 4.0, 500.0, None) == pytest.approx(0.5)  # the SLO is inclusive
    assert goodput(records, 4.0, None, 1000.0) == pytest.approx(0.5)
    assert goodput(records, 4.0, 600.0, 1500.0) == pytest.approx(0.25)
    assert summarize(records, 4.0, slo_e2el_ms=5000.0)["goodput"] == pytest.approx(0.75)


def test_ttft_by_audio_length_buckets() -> None:
    seconds = (0.5, 30, 30.5, 60, 119, 300, 600, 601, 1200, 1800, 1801)
    assert [length_bucket(s) for s in seconds] == [
        "0-30",
        "0-30",
        "30-60",
        "30-60",
        "60-120",
        "120-300",
        "300-600",
        "600-1200",
        "600-1200",
        "1200-1800",
        "1800+",
    ]
    records = [done(45.0, 0.2, 1.0), done(10.0, 0.1, 1.0), done(31.0, 0.4, 1.0)]
    records += [done(700.0, 3.0, 5.0), done(20.0, None, 1.0), failed(500)]
    buckets = ttft_by_audio_length(records)
    expected = [("0-30", 1), ("30-60", 2), ("600-1200", 1)]
    assert [(b["bucket"], b["count"]) for b in buckets] == expected
    assert buckets[1]["p50"] == pytest.approx(300.0)
    assert buckets[2]["mean"] == pytest.approx(3000.0)


def test_saturation_point_is_where_throughput_stops_rising_by_5_percent() -> None:
    assert saturation_point([1, 2, 4, 8], [1.0, 1.9, 1.99, 2.5]) == 2
    assert saturation_point([1, 2], [1.0, 1.05]) == 1  # exactly 5% is not more than 5%
    assert saturation_point([1, 2, 4], [1.0, 2.0, 3.0]) is None
    assert saturation_point([1, 2, 4], [2.0, 1.5, 3.0]) == 1  # a drop counts
    assert saturation_point([4], [2.0]) is None


def test_ratios_are_above_one_when_the_primary_is_better() -> None:
    def summary(rate: float, tokens: float, ttft_p50: float) -> dict:
        latency = {"mean": 100.0, "p50": ttft_p50, "p90": 100.0, "p99": 100.0}
        return {
            "request_throughput": rate,
            "rtfx": rate * 30,
            "output_tokens_per_s": tokens,
            "goodput": None,
            "ttft_ms": latency,
            "tpot_ms": latency,
            "itl_ms": latency,
            "e2el_ms": dict(latency, p99=None),
        }

    r = ratios(summary(2.0, 10.0, 50.0), summary(1.0, 20.0, 200.0))
    assert (r["request_throughput"], r["rtfx"], r["output_tokens_per_s"]) == (2.0, 2.0, 0.5)
    assert r["goodput"] is None
    assert r["ttft_ms.p50"] == 4.0  # compare / primary: 200 ms against 50 ms
    assert r["ttft_ms.mean"] == 1.0
    assert r["e2el_ms.p99"] is None
    assert len(r) == 4 + 4 * 4


def test_arrivals_are_gamma_with_mean_one_over_rate() -> None:
    assert arrival_offsets(3, float("inf"), 1.0, 0) == [0.0, 0.0, 0.0]
    assert arrival_offsets(1, 5.0, 1.0, 0) == [0.0]
    assert arrival_offsets(5, 2.0, 1.0, 7) == arrival_offsets(5, 2.0, 1.0, 7)  # seeded
    for burstiness in (0.25, 1.0, 4.0):
        gaps = np.diff(arrival_offsets(40001, 4.0, burstiness, 0))
        assert gaps.mean() == pytest.approx(0.25, rel=0.03)
        # a gamma's coefficient of variation is 1 / sqrt(shape)
        assert gaps.std() / gaps.mean() == pytest.approx(burstiness**-0.5, rel=0.05)


def test_lengths_are_fixed_or_drawn_in_whole_seconds() -> None:
    assert draw_lengths(3, 7.5, None, 0) == [7.5, 7.5, 7.5]
    drawn = draw_lengths(200, None, (5.0, 600.0), 1)
    assert drawn == draw_lengths(200, None, (5.0, 600.0), 1)
    assert all(5 <= s <= 600 and s == int(s) for s in drawn)


def _audio_of(body: bytes) -> tuple[np.ndarray, int, dict]:
    request = json.loads(body)
    part = request["messages"][0]["content"][0]["input_audio"]
    audio, rate = sf.read(io.BytesIO(base64.b64decode(part["data"])), dtype="int16")
    return audio, rate, request


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_every_request_carries_distinct_audio(fmt: str) -> None:
    """Equal lengths share an encoded clip, yet no two bodies decode to the same samples:
    servers cache on the samples."""
    workload = Workload(AudioSource("tone", None, 0), [2.0, 3.0, 2.0], fmt, "Hi?", False)
    fields = {"model": "m", "max_tokens": 4}
    passes = [workload.requests(fields), workload.requests(fields, count=2)]
    assert [len(p) for p in passes] == [3, 2]
    samples = set()
    for request in passes[0] + passes[1]:
        audio, rate, body = _audio_of(b"".join(request.body))
        assert rate == 16000 and audio.size == pytest.approx(request.audio_seconds * rate, abs=1)
        assert body["model"] == "m" and body["max_tokens"] == 4
        assert body["messages"][0]["content"][1] == {"type": "text", "text": "Hi?"}
        samples.add(audio.tobytes())
    assert len(samples) == 5
    if fmt == "wav":
        assert workload.distinct_clips == 2


def test_wav_signature_changes_only_a_few_quiet_samples() -> None:
    workload = Workload(AudioSource("noise", None, 0), [1.0], "wav", "Hi?", False)
    repeated = Workload(AudioSource("noise", None, 0), [1.0], "wav", "Hi?", True)
    signed, _, _ = _audio_of(b"".join(workload.requests({})[0].body))
    plain, _, _ = _audio_of(b"".join(repeated.requests({})[0].body))
    changed = np.flatnonzero(signed != plain)
    assert 0 < changed.size <= 6 and changed.max() < 16
    assert np.abs(signed[changed]).max() <= 32


def test_runs_with_different_seeds_send_different_audio() -> None:
    """Speech is the same recording whatever the seed: only the signature keeps a second
    run's audio out of the caches the first run filled (on every replica it reached)."""
    first, second = (
        Workload(AudioSource("speech", None, seed), [1.0], "wav", "Hi?", False) for seed in (1, 2)
    )
    audio = [_audio_of(b"".join(w.requests({})[0].body))[0] for w in (first, second)]
    changed = np.flatnonzero(audio[0] != audio[1])
    assert 0 < changed.size <= 6


def test_api_keys_are_masked_in_the_recorded_command() -> None:
    command = ["af3-bench", "--api-key", "s3cret", "--compare-api-key=other", "--url", "u"]
    assert redacted_command(command) == (
        "af3-bench --api-key '***' '--compare-api-key=***' --url u"
    )


def test_per_turn_splits_latencies_by_turn() -> None:
    records = [done(20.0, 0.4, 1.0), done(20.0, 0.6, 1.2), failed(500)]
    records += [done(20.0, 0.1, 0.5, turn=2), failed(None, turn=2), done(20.0, 0.05, 0.3, turn=3)]
    records[0].prompt_tokens, records[1].prompt_tokens = 500, 600
    records[3].prompt_tokens = 580
    rows = per_turn(records[::-1])  # in any order
    assert [(r["turn"], r["count"], r["failed"]) for r in rows] == [(1, 2, 1), (2, 1, 1), (3, 1, 0)]
    assert [r["prompt_tokens_mean"] for r in rows] == [550.0, 580.0, None]
    assert rows[0]["ttft_ms"] == pytest.approx(
        {"mean": 500.0, "p50": 500.0, "p90": 580.0, "p99": 598.0}
    )
    assert rows[1]["e2el_ms"] == pytest.approx(
        {"mean": 500.0, "p50": 500.0, "p90": 500.0, "p99": 500.0}
    )
    assert rows[2]["ttft_ms"]["p50"] == pytest.approx(50.0)
    assert per_turn([]) == []


def test_a_conversation_audio_counts_once_in_rtfx() -> None:
    records = [done(20.0, 0.4, 1.0), done(20.0, 0.1, 0.5, turn=2), done(20.0, 0.1, 0.5, turn=3)]
    s = summarize(records, duration_s=2.0)
    assert s["completed"] == 3 and s["total_audio_seconds"] == 20.0
    assert s["rtfx"] == pytest.approx(10.0)
    assert [t["turn"] for t in s["per_turn"]] == [1, 2, 3]


def test_turns_resend_the_audio_and_every_earlier_answer() -> None:
    assert questions("Q?", 1) == ("Q?",)
    assert questions("Q?", len(FOLLOW_UPS) + 2) == ("Q?", *FOLLOW_UPS, FOLLOW_UPS[0])
    workload = Workload(AudioSource("tone", None, 0), [2.0, 2.0], "wav", "Q?", False)
    first, second = workload.conversations({"model": "m"}, turns=3)
    assert first.questions == ("Q?", FOLLOW_UPS[0], FOLLOW_UPS[1])
    turns = [first.request([]), first.request(["A1"]), first.request(["A1", "A2"])]
    assert [(r.index, r.turn) for r in turns] == [(0, 1), (0, 2), (0, 3)]
    audio, _, body = _audio_of(b"".join(turns[2].body))
    assert body["model"] == "m"
    assert [m["role"] for m in body["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert body["messages"][0]["content"][1] == {"type": "text", "text": "Q?"}
    assert body["messages"][1:] == [
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": FOLLOW_UPS[0]},
        {"role": "assistant", "content": "A2"},
        {"role": "user", "content": FOLLOW_UPS[1]},
    ]
    # The same audio on every turn of a conversation, different audio in another.
    assert all(_audio_of(b"".join(r.body))[0].tobytes() == audio.tobytes() for r in turns)
    assert _audio_of(b"".join(second.request([]).body))[0].tobytes() != audio.tobytes()
    with pytest.raises(ValueError):
        first.request(["A1", "A2", "A3"])  # a fourth turn was never planned


METRICS = """# HELP vllm:prefix_cache_queries_total Prefix cache queries.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
vllm:prefix_cache_queries_total{engine="1",model_name="m"} 200.0
vllm:prefix_cache_queries_created{engine="0",model_name="m"} 1.7e+09
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 512.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 0.0
# TYPE vllm:mm_cache_queries_total counter
vllm:mm_cache_queries_total{engine="0",model_name="m"} 6.0
# TYPE vllm:mm_cache_hits_total counter
vllm:mm_cache_hits_total{engine="0",model_name="m"} 4.0
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 9999.0
"""


def test_cache_counters_are_summed_over_engines() -> None:
    assert parse_counters(METRICS) == {
        "vllm:prefix_cache_queries_total": 1200.0,
        "vllm:prefix_cache_hits_total": 512.0,
        "vllm:mm_cache_queries_total": 6.0,
        "vllm:mm_cache_hits_total": 4.0,
    }
    assert parse_counters("# no metrics here\n") == {}
    with pytest.raises(ValueError):
        parse_counters("<html>not found</html>")


def test_cache_delta_is_hits_and_queries_between_readings() -> None:
    before = parse_counters(METRICS)
    after = before | {
        "vllm:prefix_cache_queries_total": 2200.0,
        "vllm:prefix_cache_hits_total": 1262.0,
    }
    delta = cache_delta(before, after)
    assert delta["prefix_cache"] == {
        "unit": "tokens",
        "queries": 1000.0,
        "hits": 750.0,
        "hit_rate": 0.75,
    }
    assert delta["mm_cache"] == {"unit": "items", "queries": 0.0, "hits": 0.0, "hit_rate": None}
    no_mm = {k: v for k, v in after.items() if not k.startswith("vllm:mm_")}
    assert cache_delta(before, no_mm)["mm_cache"] is None
    assert cache_delta({}, {}) == {"prefix_cache": None, "mm_cache": None}


@pytest.mark.parametrize("status, text", [(401, "Unauthorized"), (200, "<html>a page</html>")])
async def test_unreadable_metrics_warn_and_give_none(status: int, text: str, capsys) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, text=text))
    async with httpx.AsyncClient(transport=transport) as client:
        assert await read_counters(client, "http://x/metrics", {}) is None
    assert "warning: no cache counters from http://x/metrics" in capsys.readouterr().err


async def test_a_failed_turn_ends_its_conversation(monkeypatch) -> None:
    """One pass of two 3-turn conversations against a fake server whose first turn-2
    request fails: that conversation stops, the other goes on with its own answers."""
    bodies: list[dict] = []
    metrics_reads = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal metrics_reads
        if request.url.path == "/metrics":  # read before and after the pass
            metrics_reads += 1
            queries, hits = 200 * metrics_reads, 100 * metrics_reads
            text = (
                f"vllm:prefix_cache_queries_total {queries}\nvllm:prefix_cache_hits_total {hits}\n"
            )
            return httpx.Response(200, text=text)
        assert request.headers["authorization"] == "Bearer k"
        body = json.loads(request.content)
        bodies.append(body)
        turn = (len(body["messages"]) + 1) // 2
        if turn == 2 and all(len(b["messages"]) != 3 for b in bodies[:-1]):
            return httpx.Response(500, json={"error": {"message": "boom"}})
        answer = {"message": {"role": "assistant", "content": f"answer {len(bodies)}"}}
        usage = {"prompt_tokens": 10 * turn, "completion_tokens": 1}
        return httpx.Response(200, json={"choices": [answer], "usage": usage})

    def client(timeout_s: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(handler))

    monkeypatch.setattr(runner, "_client", client)
    workload = Workload(AudioSource("tone", None, 0), [1.0, 1.0], "wav", "Q?", False)
    endpoint = runner.Endpoint("primary", "http://fake", "m", "k")
    result = await runner.run_pass(
        endpoint, workload.conversations({}, 3), [0.0, 0.0], 1, None, False, 60.0, "test"
    )
    assert [(r.index, r.turn, r.ok) for r in result.records] == [
        (0, 1, True),
        (0, 2, False),
        (1, 1, True),
        (1, 2, True),
        (1, 3, True),
    ]
    assert result.unfinished == 1  # conversation 0's third turn, never sent
    assert result.records[3].answer == "answer 4" and result.records[3].prompt_tokens == 20
    # Conversation 1's third turn carries its own two answers.
    assert [m["content"] for m in bodies[-1]["messages"][1::2]] == ["answer 3", "answer 4"]
    assert result.cache == {
        "prefix_cache": {"unit": "tokens", "queries": 200.0, "hits": 100.0, "hit_rate": 0.5},
        "mm_cache": None,  # not exported by this server
    }
