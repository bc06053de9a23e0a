"""`af3-eval`: an AF3-format dataset against a running af3-serve, many questions at once.

AF3's evaluation asks one question at a time; the engine batches whatever is in flight,
so this keeps `--concurrency` requests open. Answers are appended to `--predictions` as
they arrive: a run that stops (killed, network, --limit) resumes where it was.
"""

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import openai
import soundfile as sf
from tqdm import tqdm

from af3_model_executor.constants import AUDIO_TOKEN
from af3_serve.tools import common
from af3_serve.tools.scoring import Scores, is_transcription, score


@dataclass(frozen=True)
class Item:
    id: str
    question: str  # the human turn without its <sound> marker
    reference: str | None  # the first gpt turn, if any
    sounds: tuple[Path, ...]
    duration: float | None  # the dataset's own figure, used when a header says nothing


def load_dataset(path: Path) -> list[Item]:
    """AF3's format: [{"id", "sound", "duration", "conversations": [{"from", "value"}]}]."""
    items = []
    for entry in json.loads(path.read_text()):
        turns = entry["conversations"]
        human = next(i for i, t in enumerate(turns) if t["from"] == "human")
        reference = next((t["value"] for t in turns[human + 1 :] if t["from"] == "gpt"), None)
        sounds = entry["sound"] if isinstance(entry["sound"], list) else [entry["sound"]]
        items.append(
            Item(
                id=str(entry["id"]),
                question=turns[human]["value"].replace(AUDIO_TOKEN, "").strip(),
                reference=reference,
                # Relative paths are relative to the dataset file, wherever we run from.
                sounds=tuple(path.parent / s for s in sounds),
                duration=entry.get("duration"),
            )
        )
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: ids repeat; resuming needs one answer per id")
    return items


def load_predictions(path: Path) -> list[dict]:
    """Earlier answers; a last line cut off by a kill mid-write is dropped (and rerun)."""
    if not path.exists():
        return []
    *lines, tail = path.read_text().split("\n")
    if tail:
        path.write_text("".join(line + "\n" for line in lines))
    return [json.loads(line) for line in lines if line.strip()]


def audio_seconds(item: Item) -> float | None:
    try:
        return sum(sf.info(str(p)).duration for p in item.sounds)
    except sf.LibsndfileError:
        return item.duration


def request_content(item: Item) -> list[dict]:
    parts = [common.audio_part(p) for p in item.sounds]
    return [*parts, {"type": "text", "text": item.question}]


def uses_transcription_endpoint(item: Item, args: argparse.Namespace) -> bool:
    """A transcription question about one recording goes to /v1/audio/transcriptions (unless
    --transcribe-with-chat), as its scoring expects a transcript; thinking mode is chat's."""
    return (
        not args.transcribe_with_chat
        and not args.think
        and len(item.sounds) == 1
        and is_transcription(item.question)
    )


@dataclass(frozen=True)
class Throughput:
    answered: int
    failed: int
    seconds: float
    questions_per_s: float
    audio_hours_per_hour: float  # audio seconds answered per wall-clock second
    mean_latency_s: float | None


@dataclass
class _Tally:
    """What the workers of one run have done so far."""

    answered: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    latency_s: float = 0.0


async def run(items: list[Item], args: argparse.Namespace, out: Path, progress: tqdm) -> Throughput:
    client = openai.AsyncOpenAI(
        base_url=common.base_url(args.url),
        api_key=common.api_key(args.api_key),
        # A busy server answers 503/429 with Retry-After; the client waits and retries.
        max_retries=8,
        timeout=args.timeout,
    )
    todo = iter(items)  # one shared iterator: each item goes to one worker
    tally = _Tally()
    start = time.perf_counter()
    with out.open("a") as sink:
        workers = (
            _worker(client, todo, args, sink, tally, progress) for _ in range(args.concurrency)
        )
        await asyncio.gather(*workers)
    await client.close()
    return _throughput(tally, time.perf_counter() - start)


async def _worker(
    client: openai.AsyncOpenAI,
    todo: Iterator[Item],
    args: argparse.Namespace,
    sink: TextIO,
    tally: _Tally,
    progress: tqdm,
) -> None:
    for item in todo:
        try:
            if uses_transcription_endpoint(item, args):
                data = await asyncio.to_thread(item.sounds[0].read_bytes)
                sent = time.perf_counter()
                # The server's own segmentation: windows cut at the pauses, any length up
                # to its transcription limit, the wrapper phrasing already removed.
                transcript = await client.audio.transcriptions.create(
                    model=args.model,
                    file=(item.sounds[0].name, data),
                    temperature=args.temperature,
                )
                answer = transcript.text
            else:
                content = await asyncio.to_thread(request_content, item)
                sent = time.perf_counter()
                reply = await client.chat.completions.create(
                    model=args.model,
                    messages=[{"role": "user", "content": content}],
                    **common.sampling_body(args),
                    **common.thinking_body(args),
                    extra_headers=common.session_headers(),  # one conversation per item
                )
                answer = reply.choices[0].message.content or ""
        except (openai.AuthenticationError, openai.NotFoundError):
            raise  # a wrong key, model or URL fails every item alike: stop
        except (openai.APIError, OSError) as exc:
            tally.failed += 1
            progress.write(f"{item.id}: {exc}", file=sys.stderr)
            continue
        latency = time.perf_counter() - sent
        seconds = await asyncio.to_thread(audio_seconds, item)
        record = {
            "id": item.id,
            "question": item.question,
            "answer": answer,
            "reference": item.reference,
            "audio_seconds": seconds,
            "latency_s": round(latency, 3),
        }
        sink.write(json.dumps(record, ensure_ascii=False) + "\n")
        sink.flush()  # answered is answered, even if we are killed next
        tally.answered += 1
        tally.audio_seconds += seconds or 0.0
        tally.latency_s += latency
        progress.update()


def _throughput(tally: _Tally, elapsed: float) -> Throughput:
    return Throughput(
        answered=tally.answered,
        failed=tally.failed,
        seconds=round(elapsed, 3),
        questions_per_s=tally.answered / elapsed,
        audio_hours_per_hour=tally.audio_seconds / elapsed,
        mean_latency_s=tally.latency_s / tally.answered if tally.answered else None,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="af3-eval", description="Run and score an AF3-format dataset on af3-serve."
    )
    p.add_argument("dataset", type=Path, help="JSON list of {id, sound, conversations}")
    p.add_argument("--url", required=True, help="the af3-serve, e.g. http://host:8000")
    common.add_api_key_arg(p)
    p.add_argument("--model", default=None, help="served model name (default: the server's)")
    p.add_argument(
        "--predictions",
        type=Path,
        default=None,
        help="JSONL of answers, appended; ids in it are skipped (default: next to DATASET)",
    )
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    p.add_argument("--limit", type=int, default=None, help="answer at most this many now")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per request")
    p.add_argument("--report", type=Path, default=None, help="also write the report as JSON")
    p.add_argument(
        "--transcribe-with-chat",
        action="store_true",
        help="send transcription questions to /v1/chat/completions with the audio whole "
        "(default: /v1/audio/transcriptions, windows cut at the pauses)",
    )
    common.add_sampling_args(p)
    args = p.parse_args(argv)
    if args.predictions is None:
        args.predictions = args.dataset.with_suffix(".predictions.jsonl")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    items = load_dataset(args.dataset)
    done = {p["id"] for p in load_predictions(args.predictions)}
    pending = [item for item in items if item.id not in done]
    if args.model is None:
        try:
            args.model = common.served_model(args.url, common.api_key(args.api_key))
        except RuntimeError as exc:
            sys.exit(f"af3-eval: {exc}")
    with tqdm(total=len(items), initial=len(items) - len(pending), unit="q") as progress:
        try:
            throughput = asyncio.run(run(pending[: args.limit], args, args.predictions, progress))
        except (openai.AuthenticationError, openai.NotFoundError) as exc:
            sys.exit(f"af3-eval: {exc}")
        except KeyboardInterrupt:
            sys.exit(
                f"af3-eval: interrupted; answers so far are in {args.predictions}; "
                "the same command goes on from there"
            )

    wanted = {item.id for item in items}
    scores = score(p for p in load_predictions(args.predictions) if p["id"] in wanted)
    print_report(throughput, scores, len(items), args.predictions)
    if args.report:
        report = {"throughput": asdict(throughput), "scores": asdict(scores)}
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    if throughput.failed:
        sys.exit(1)


def print_report(t: Throughput, s: Scores, total: int, predictions: Path) -> None:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    print(f"predictions: {predictions} ({s.scored} scored of {total} questions)")
    print(
        f"this run: {t.answered} answered, {t.failed} failed in {t.seconds:.1f} s: "
        f"{t.questions_per_s:.2f} questions/s, {t.audio_hours_per_hour:.1f} audio hours/hour"
    )
    print(f"exact match: {pct(s.exact_match)}")
    print(f"multiple choice: {pct(s.multiple_choice_accuracy)} of {s.multiple_choice}")
    print(f"transcription: WER {pct(s.wer)}, CER {pct(s.cer)} over {s.transcription}")


if __name__ == "__main__":
    main()
