"""What one server process holds while it runs: the engine, the chat template, the
audio-decoding pool and the admission counters."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from transformers import AutoTokenizer
from vllm import SamplingParams
from vllm.engine.protocol import EngineClient
from vllm.exceptions import VLLMValidationError
from vllm.outputs import RequestOutput
from vllm.v1.engine.exceptions import EngineDeadError

from af3_serve import metrics
from af3_serve.admission import Admission, Ticket
from af3_serve.audio import TARGET_RATE, AudioLimits, decode_audio, header_seconds
from af3_serve.config import ServerConfig
from af3_serve.errors import APIError
from af3_serve.media import MediaPolicy, load_audio_bytes
from af3_serve.model_files import ModelFiles
from af3_serve.prompts import AudioRef, with_think_suffix


class Runtime:
    def __init__(self, config: ServerConfig, engine: EngineClient, files: ModelFiles) -> None:
        self.config = config
        self.engine = engine
        self.think = files.think
        self.think_lora = files.think.lora_request(config.think_name) if files.think else None
        self.tokenizer = AutoTokenizer.from_pretrained(files.model_dir)
        self.audio_token_id = engine.model_config.hf_config.audio_token_id
        self.max_model_len = engine.model_config.max_model_len
        self.created = int(time.time())
        self.media = MediaPolicy(
            max_bytes=config.max_request_bytes,
            allowed_domains=config.allowed_media_domains,
            allowed_local_path=config.allowed_local_media_path,
            allow_private_addresses=config.allow_private_media_addresses,
        )
        self.limits = AudioLimits(config.max_audio_seconds, config.max_decoded_audio_bytes)
        # Decoding runs here, off the event loop; libsndfile and soxr release the GIL.
        self.decode_pool = ThreadPoolExecutor(config.audio_decode_workers, "af3-decode")
        self.admission = Admission(
            config.max_pending_requests,
            config.max_pending_requests_per_key,
            config.max_queued_audio_seconds,
        )
        self.engine_dead = False
        self._engine_dead_event = asyncio.Event()

    def check_model(self, model: str, thinking: bool | None = None) -> bool:
        """Whether the request runs in thinking mode, asked for by the model name or by the
        `thinking` field."""
        if self.think is not None and model == self.config.think_name:
            if thinking is False:
                raise APIError(
                    400,
                    f"The model '{model}' always thinks; use "
                    f"'{self.config.served_model_name}' for answers without thinking.",
                    param="thinking",
                )
            return True
        if model not in {self.config.served_model_name, self.config.model}:
            raise APIError(
                404, f"The model '{model}' does not exist.", param="model", code="model_not_found"
            )
        if thinking and self.think is None:
            raise APIError(
                400,
                "Thinking mode is not available: the server runs without a thinking adapter.",
                param="thinking",
                code="thinking_unavailable",
            )
        return bool(thinking)

    def admit(self, client: str) -> Ticket:
        if self.engine_dead:
            metrics.REJECTED.labels("engine_dead").inc()
            raise APIError(503, "The engine is not running.", code="engine_dead")
        return self.admission.admit(client)

    async def decode(self, data: bytes, param: str, ticket: Ticket) -> np.ndarray:
        """Reserve the audio's seconds from its header (refusing cheaply when the backlog
        is full), decode off the event loop, then reserve whatever the header understated."""
        claimed = min(header_seconds(data) or 0.0, self.config.max_audio_seconds)
        self.admission.reserve_audio(ticket, claimed)
        start = time.perf_counter()
        audio = await asyncio.get_running_loop().run_in_executor(
            self.decode_pool, decode_audio, data, self.limits, param
        )
        seconds = audio.size / TARGET_RATE
        if seconds > claimed:
            self.admission.reserve_audio(ticket, seconds - claimed)
        metrics.AUDIO_DECODE_SECONDS.observe(time.perf_counter() - start)
        metrics.AUDIO_SECONDS.inc(seconds)
        return audio

    async def load_audios(self, refs: list[AudioRef], ticket: Ticket) -> list[np.ndarray]:
        if len(refs) > self.config.max_audios_per_request:
            raise APIError(
                400,
                f"At most {self.config.max_audios_per_request} audios may be "
                f"sent in one request; got {len(refs)}.",
                param="messages",
                code="too_many_audios",
            )
        audios = []
        for ref in refs:
            data = await load_audio_bytes(ref.part, self.media, ref.param)
            audios.append(await self.decode(data, ref.param, ticket))
        metrics.REQUEST_AUDIO_SECONDS.observe(sum(a.size for a in audios) / TARGET_RATE)
        return audios

    async def render(
        self, conversation: list[dict[str, Any]], audios: list[np.ndarray], think: bool = False
    ) -> Any:
        """Prompt tokens with each `<sound>` expanded, run through our processor. Thinking
        mode gets AF3's suffix on the question and, when its adapter retrained the adaptor,
        sends the audios through that one."""
        if think:
            conversation = with_think_suffix(conversation)
        try:
            prompt = self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
            prompt.encode()
        except UnicodeError as exc:  # e.g. a lone surrogate from a JSON \ud800 escape
            raise APIError(
                400,
                "The messages hold text that is not valid Unicode.",
                param="messages",
                code="invalid_text",
            ) from exc
        mm_data = {"audio": [(audio, TARGET_RATE) for audio in audios]} if audios else None
        request: dict[str, Any] = {"prompt": prompt}
        if mm_data:
            request["multi_modal_data"] = mm_data
            if think and self.think is not None and (kwargs := self.think.mm_processor_kwargs()):
                request["mm_processor_kwargs"] = kwargs
        try:
            (engine_input,) = await self.engine.renderer.render_cmpl_async([request])
        except (ValueError, VLLMValidationError) as exc:
            raise APIError(400, str(exc), param="messages", code="invalid_audio") from exc
        if len(engine_input["prompt_token_ids"]) >= self.max_model_len:
            raise APIError(
                400,
                f"The prompt is {len(engine_input['prompt_token_ids'])} tokens; "
                f"the model's context is {self.max_model_len}.",
                param="messages",
                code="context_length_exceeded",
            )
        return engine_input

    def mark_engine_dead(self) -> None:
        self.engine_dead = True
        self._engine_dead_event.set()

    async def generate(
        self, engine_input: Any, params: SamplingParams, request_id: str, think: bool = False
    ) -> AsyncIterator[RequestOutput]:
        """The engine's outputs (through the thinking LoRA when `think`), ended with
        EngineDeadError once the engine is found dead: a request added while the engine
        was dying would otherwise wait forever."""
        lora = self.think_lora if think else None
        outputs = self.engine.generate(engine_input, params, request_id, lora_request=lora)
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
