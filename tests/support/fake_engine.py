"""An engine for the HTTP tests: what the app uses of vLLM's `EngineClient`, without an engine
core. Prompts go through vLLM's real renderer and our real multimodal processor (so token
counts and audio limits are the server's own); generation yields real `RequestOutput`s of a
fixed text, one token per step, and records what was started, finished and aborted."""

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from vllm import SamplingParams
from vllm.config import VllmConfig
from vllm.logprobs import Logprob
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.renderers import renderer_from_config
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.exceptions import EngineDeadError
from vllm.v1.metrics.stats import RequestStateStats

ANSWER = " The quick brown fox jumps over the lazy dog."


class WallClock:
    """The engine's timestamps and its wait per token: real time."""

    def time(self) -> float:
        return time.time()

    async def step(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class StepClock(WallClock):
    """Time that moves only as the fake engine steps (`step_s` a token, no real wait), for
    timings that are exact rather than measured."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    async def step(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class FakeEngine:
    def __init__(self, vllm_config: VllmConfig, step_s: float = 0.0) -> None:
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.renderer = renderer_from_config(vllm_config)
        self.tokenizer = self.renderer.get_tokenizer()
        self.answer_ids = self.tokenizer.encode(ANSWER, add_special_tokens=False)
        self.step_s = step_s  # seconds per generated token: keeps requests in flight
        self.started: list[str] = []
        self.finished: list[str] = []
        self.aborted: list[str] = []
        self.prompts: dict[str, list[int]] = {}
        # Each request's audios by vLLM's content hashes: equal hashes, the same samples.
        self.audios: dict[str, list[str]] = {}
        self.params: dict[str, SamplingParams] = {}  # what each request was sampled with
        self.lora: dict[str, str | None] = {}
        # A request's own answer by its id (e.g. one per speech window), which ends with
        # finish_reason "stop" when it is shorter than max_tokens; without it, ANSWER repeats
        # up to max_tokens.
        self.answer_for: Callable[[str], str] | None = None
        self.paused = False  # while true, generation waits before each token
        self.clock: WallClock = WallClock()  # a StepClock makes timings exact
        self._errored = False

    @property
    def errored(self) -> bool:
        return self._errored

    @property
    def dead_error(self) -> BaseException:
        return EngineDeadError()

    def kill(self) -> None:
        """As if the engine core died: running requests fail, `errored` turns true."""
        self._errored = True

    def shutdown(self, timeout: float | None = None) -> None:
        pass

    async def check_health(self) -> None:
        if self._errored:
            raise self.dead_error

    async def abort(self, request_id: str | list[str]) -> None:
        self.aborted.extend([request_id] if isinstance(request_id, str) else request_id)

    async def generate(
        self,
        prompt: Any,
        sampling_params: SamplingParams,
        request_id: str,
        *,
        lora_request: Any = None,
        **_: Any,
    ) -> AsyncGenerator[RequestOutput, None]:
        if self._errored:
            raise self.dead_error
        self.started.append(request_id)
        self.prompts[request_id] = list(prompt["prompt_token_ids"])
        self.audios[request_id] = list(prompt.get("mm_hashes", {}).get("audio", []))
        self.params[request_id] = sampling_params
        self.lora[request_id] = lora_request.lora_name if lora_request else None
        params = sampling_params
        delta = params.output_kind == RequestOutputKind.DELTA
        if self.answer_for is None:
            ids = list(itertools.islice(itertools.cycle(self.answer_ids), params.max_tokens))
            stop = False
        else:
            own = self.tokenizer.encode(self.answer_for(request_id), add_special_tokens=False)
            ids, stop = own[: params.max_tokens], len(own) < params.max_tokens
        # The engine's own timestamps, as vLLM's output processor keeps them.
        stats = RequestStateStats(arrival_time=self.clock.time())
        done = False
        try:
            for step in range(1, len(ids) + 1):
                await self.clock.step(self.step_s)
                while self.paused and not self._errored:
                    await asyncio.sleep(0.005)
                if self._errored:
                    raise self.dead_error
                if step == 1:
                    stats.first_token_latency = self.clock.time() - stats.arrival_time
                last = step == len(ids)
                if delta or last:
                    new = ids[step - 1 : step] if delta else ids[:step]
                    yield self._output(request_id, prompt, params, new, last, stats, stop)
            done = True
            self.finished.append(request_id)
        finally:
            if not done:
                self.aborted.append(request_id)

    def _output(
        self,
        request_id: str,
        prompt: Any,
        params: SamplingParams,
        ids: list[int],
        last: bool,
        stats: RequestStateStats,
        stop: bool = False,
    ) -> RequestOutput:
        logprobs = None
        if params.logprobs is not None:
            logprobs = [
                {t: Logprob(-0.5, 1, self.tokenizer.decode([t]))}
                | {t + 1 + k: Logprob(-1.0 - k, 2 + k, self.tokenizer.decode([t + 1 + k]))
                   for k in range(params.logprobs)}
                for t in ids
            ]  # fmt: skip
        outputs = [
            CompletionOutput(
                index=i,
                text=self.tokenizer.decode(ids),
                token_ids=ids,
                cumulative_logprob=None,
                logprobs=logprobs,
                finish_reason=("stop" if stop else "length") if last else None,
            )
            for i in range(params.n)
        ]
        prompt_logprobs = None
        if params.prompt_logprobs is not None:  # as vLLM: none for the first prompt token
            prompt_logprobs = [None] + [
                {t: Logprob(-2.0, 1, self.tokenizer.decode([t]))}
                for t in prompt["prompt_token_ids"][1:]
            ]
        return RequestOutput(
            request_id=request_id,
            prompt=None,
            prompt_token_ids=list(prompt["prompt_token_ids"]),
            prompt_logprobs=prompt_logprobs,
            outputs=outputs,
            finished=last,
            metrics=stats,
            num_cached_tokens=0,
        )
