"""What one server process holds while it runs: the engine, the served models, admission and
the input preparation; and the engine's outputs, ended cleanly when the engine dies."""

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from vllm import SamplingParams
from vllm.engine.protocol import EngineClient
from vllm.outputs import RequestOutput
from vllm.v1.engine.exceptions import EngineDeadError

from af3_serve import metrics
from af3_serve.admission import Admission, Ticket
from af3_serve.config import ServerConfig
from af3_serve.edge.errors import APIError
from af3_serve.inputs.prepare import InputPreparer
from af3_serve.model_files import ModelFiles
from af3_serve.served_models import ServedModels

ENGINE_DEAD_MESSAGE = "The engine stopped while serving this request."


class Runtime:
    def __init__(self, config: ServerConfig, engine: EngineClient, files: ModelFiles) -> None:
        self.config = config
        self.engine = engine
        max_audio_seconds = config.audio_seconds_limit(files.audio.max_audio_seconds)
        self.models = ServedModels(
            config, files.think is not None, engine.model_config.max_model_len, max_audio_seconds
        )
        self.think_lora = files.think.lora_request(config.think_name) if files.think else None
        self.audio_token_id: int = engine.model_config.hf_config.audio_token_id
        self.admission = Admission(
            config.max_pending_requests,
            config.max_pending_requests_per_key,
            config.max_queued_audio_seconds,
        )
        self.inputs = InputPreparer(
            config,
            engine,
            files.model_dir,
            files.think,
            self.admission,
            files.audio,
            max_audio_seconds,
        )
        parallel = engine.vllm_config.parallel_config
        self.dp_ranks = (
            parallel.data_parallel_size_local
            if parallel.local_engines_only
            else parallel.data_parallel_size
        )
        self.engine_dead = False
        self._engine_dead_event = asyncio.Event()
        # The wall clock that times requests (arrival, first token), as the engine's own
        # timestamps are; the HTTP tests give it the fake engine's clock.
        self.clock: Callable[[], float] = time.time

    def engine_rank(self, session: str | None) -> int | None:
        """The data-parallel engine of a named conversation. vLLM's balancer spreads
        requests by load and knows nothing of conversations, so a later turn could land on an
        engine that never saw its audio; a stable hash of the session id keeps every turn on
        one engine, with its cached prefix. Requests without a session stay on vLLM's own
        balancing."""
        if session is None or self.dp_ranks <= 1:
            return None
        digest = hashlib.blake2b(session.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.dp_ranks

    def admit(self, client: str) -> Ticket:
        if self.engine_dead:
            metrics.REJECTED.labels("engine_dead").inc()
            raise APIError(503, "The engine is not running.", code="engine_dead")
        return self.admission.admit(client)

    def mark_engine_dead(self) -> None:
        self.engine_dead = True
        self._engine_dead_event.set()

    async def generate(
        self,
        engine_input: Any,
        params: SamplingParams,
        request_id: str,
        think: bool = False,
        session: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """The engine's outputs (through the thinking LoRA when `think`), ended with
        EngineDeadError once the engine is found dead: a request added while the engine
        was dying would otherwise wait forever. `session` names the conversation."""
        outputs = self.engine.generate(
            engine_input,
            params,
            request_id,
            lora_request=self.think_lora if think else None,
            data_parallel_rank=self.engine_rank(session),
            session_id=session,
        )
        dead = asyncio.ensure_future(self._engine_dead_event.wait())
        step: asyncio.Future | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(outputs))
                await asyncio.wait({step, dead}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    raise EngineDeadError()
                try:
                    output = step.result()
                except StopAsyncIteration:
                    return
                yield output
        finally:
            dead.cancel()
            if step is not None and not step.done():
                # Cancelling the pending step is what makes vLLM abort the request.
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, EngineDeadError):
                    await step
            await outputs.aclose()

    async def aclose(self) -> None:
        await self.inputs.aclose()
        self.engine.shutdown()


def get_runtime(request: Request) -> Runtime:
    """A FastAPI dependency: the process's runtime."""
    return request.app.state.runtime
