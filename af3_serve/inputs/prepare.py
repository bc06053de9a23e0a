"""A request's audios and conversation -> the engine's input: audio fetched and decoded off
the event loop (its seconds reserved against the backlog first), the prompt rendered by
vLLM's renderer, which runs our multimodal processor."""

import asyncio
import inspect
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, TypeVar

import numpy as np
from jinja2 import TemplateError
from transformers import AutoTokenizer
from vllm.engine.protocol import EngineClient
from vllm.exceptions import VLLMValidationError

from af3_model_executor.audio_spec import AudioSpec
from af3_model_executor.constants import SAMPLE_RATE
from af3_model_executor.think_adapter import ThinkAdapter
from af3_serve import metrics
from af3_serve.admission import Admission, Ticket
from af3_serve.config import ServerConfig
from af3_serve.edge.errors import APIError
from af3_serve.inputs.audio import AudioLimits, decode_audio, decode_pcm16, header_seconds
from af3_serve.inputs.media import MediaPolicy, load_audio_bytes
from af3_serve.inputs.prompts import AudioRef, with_think_suffix
from af3_serve.inputs.vad import VoiceActivity

T = TypeVar("T")


class InputPreparer:
    def __init__(
        self,
        config: ServerConfig,
        engine: EngineClient,
        model_dir: str,
        think: ThinkAdapter | None,
        admission: Admission,
        spec: AudioSpec,
        max_audio_seconds: float,
    ) -> None:
        """`spec`: the checkpoint's audio front end; `max_audio_seconds`: the longest audio
        served (the checkpoint's limit, or lower)."""
        self.engine = engine
        self.spec = spec
        self.think = think
        self.admission = admission
        self.model = config.served_model_name
        self.max_audio_seconds = max_audio_seconds
        self.max_audios = config.max_audios_per_request
        self.max_model_len = engine.model_config.max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.audio_token_id: int = engine.model_config.hf_config.audio_token_id
        self.default_system = _default_system(self.tokenizer)
        # chat_template_kwargs may not set what the server itself passes to the template.
        self.reserved_template_kwargs = {"messages"} | set(
            inspect.signature(self.tokenizer.apply_chat_template).parameters
        )
        self.media = MediaPolicy(
            max_bytes=config.max_request_bytes,
            allowed_domains=config.allowed_media_domains,
            allowed_local_path=config.allowed_local_media_path,
            allow_private_addresses=config.allow_private_media_addresses,
        )
        self.limits = AudioLimits(max_audio_seconds, config.max_decoded_audio_bytes)
        self.transcription_limits = AudioLimits(
            config.transcription_seconds_limit, config.max_decoded_audio_bytes
        )
        # Voice activity (the transcription endpoints) runs in processes of its own.
        self.voice = VoiceActivity(config.vad_workers)
        # Decoding runs here, off the event loop; libsndfile and soxr release the GIL.
        self.decode_pool = ThreadPoolExecutor(config.audio_decode_workers, "af3-decode")
        # Live turn detection (realtime sessions' appends, a few ms each) has threads of its
        # own, so a long file's decode never delays hearing that a speaker stopped.
        self.turn_pool = ThreadPoolExecutor(config.vad_workers, "af3-turns")

    async def decode(self, data: bytes, param: str, ticket: Ticket) -> np.ndarray:
        """Reserve the audio's seconds from its header (refusing cheaply when the backlog
        is full), decode off the event loop, then reserve whatever the header understated."""
        claimed = min(header_seconds(data) or 0.0, self.max_audio_seconds)
        self.admission.reserve_audio(ticket, claimed)
        start = time.perf_counter()
        try:
            audio = await self.off_loop(decode_audio, data, self.limits, param)
        except APIError as exc:
            if exc.code == "audio_too_long":  # whose limit it is: the model's (or lower)
                exc.message = exc.message.removesuffix(".") + f" for the model '{self.model}'."
            raise
        if (error := self.spec.length_error(audio.size)) is not None:
            # The same check as our multimodal processor's, here with the part it came from.
            status = 413 if error.code == "audio_too_long" else 400
            raise APIError(status, str(error), param=param, code=error.code)
        self._decoded(ticket, audio.size, claimed, start)
        return audio

    async def decode_transcription(self, file: BinaryIO, param: str, ticket: Ticket) -> np.ndarray:
        """A file to transcribe, read where it lies (the spooled upload), as 16-kHz int16
        PCM: up to --max-transcription-seconds, its seconds reserved as `decode`'s are."""
        limit = self.transcription_limits.max_seconds
        # Off the loop: for some formats libsndfile counts the frames by reading the file.
        claimed = min(await self.off_loop(header_seconds, file) or 0.0, limit)
        self.admission.reserve_audio(ticket, claimed)
        start = time.perf_counter()
        try:
            pcm = await self.off_loop(decode_pcm16, file, self.transcription_limits, param)
        except APIError as exc:
            if exc.code == "audio_too_long":
                exc.message = (
                    exc.message.removesuffix(".") + " to transcribe (--max-transcription-seconds)."
                )
            raise
        if (
            error := self.spec.length_error(pcm.size)
        ) is not None and error.code != "audio_too_long":
            raise APIError(400, str(error), param=param, code=error.code)
        self._decoded(ticket, pcm.size, claimed, start)
        return pcm

    def _decoded(self, ticket: Ticket, samples: int, claimed: float, start: float) -> None:
        """Reserve what the header understated, and count the decoding."""
        seconds = samples / SAMPLE_RATE
        if seconds > claimed:
            self.admission.reserve_audio(ticket, seconds - claimed)
        metrics.AUDIO_DECODE_SECONDS.observe(time.perf_counter() - start)
        metrics.AUDIO_SECONDS.inc(seconds)

    async def off_loop(self, work: Callable[..., T], *args: Any, live: bool = False) -> T:
        """CPU work of a request (decoding, tokenizing, voice activity) in the decode
        workers; `live`: a realtime session's turn detection, in the turn threads."""
        pool = self.turn_pool if live else self.decode_pool
        return await asyncio.get_running_loop().run_in_executor(pool, work, *args)

    async def load_audios(
        self, refs: list[AudioRef], ticket: Ticket, audios: int | None = None
    ) -> list[np.ndarray]:
        """The refs' audios, decoded. `audios`: how many audios they are, where fewer than
        the refs (a realtime conversation sends a long turn as clips, realtime/prefill.py)."""
        if (audios := len(refs) if audios is None else audios) > self.max_audios:
            raise APIError(
                400,
                f"At most {self.max_audios} audios may be sent in one request; got {audios}.",
                param="messages",
                code="too_many_audios",
            )
        audios = []
        for ref in refs:
            data = await load_audio_bytes(ref.part, self.media, ref.param)
            audios.append(await self.decode(data, ref.param, ticket))
        metrics.REQUEST_AUDIO_SECONDS.observe(sum(a.size for a in audios) / SAMPLE_RATE)
        return audios

    async def chat_prompt(
        self,
        conversation: list[dict[str, Any]],
        refs: list[AudioRef],
        ticket: Ticket,
        think: bool = False,
        audios: int | None = None,
        **template: Any,
    ) -> Any:
        """A chat conversation's engine input: its audios fetched and decoded (reserved on
        `ticket`; `audios`: as `load_audios`), then `render`ed with the template options in
        `template`."""
        decoded = await self.load_audios(refs, ticket, audios)
        return await self.render(conversation, decoded, think, **template)

    def check_token_ids(self, ids: list[int], param: str) -> None:
        """Refuse ids past the tokenizer's vocabulary, naming `param`."""
        vocabulary = len(self.tokenizer)
        if unknown := [t for t in ids if not 0 <= t < vocabulary]:
            raise APIError(
                400,
                f"Token ids {unknown[:5]} are past the vocabulary ({vocabulary} tokens).",
                param=param,
                code="invalid_token_id",
            )

    async def text_prompt(self, prompt: str | list[int], param: str) -> dict[str, Any]:
        """A text prompt (or its token ids) as the engine's input, tokenized off the event
        loop. Audio has no place in it: the audio placeholder is refused, as are ids past the
        vocabulary and prompts that leave no room in the context."""
        if isinstance(prompt, str):
            ids = await self.off_loop(self.tokenizer.encode, prompt)
        else:
            ids = prompt
            self.check_token_ids(ids, param)
        if not ids:
            raise APIError(400, "The prompt is empty.", param=param)
        if self.audio_token_id in ids:
            raise APIError(
                400,
                "A text prompt cannot hold the audio placeholder; send audio through "
                "/v1/chat/completions or /v1/responses.",
                param=param,
            )
        if len(ids) >= self.max_model_len:
            raise APIError(
                400,
                f"The prompt is {len(ids)} tokens; the model's context is {self.max_model_len}.",
                param=param,
                code="context_length_exceeded",
            )
        return {"prompt_token_ids": list(ids)}

    async def render(
        self,
        conversation: list[dict[str, Any]],
        audios: list[np.ndarray],
        think: bool = False,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        template_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """Prompt tokens with each `<sound>` expanded, run through our processor. Thinking
        mode gets AF3's suffix on the question and, when its adapter retrained the adaptor,
        sends the audios through that one. The template options are vLLM's request fields
        (`add_generation_prompt`, `continue_final_message`, `chat_template_kwargs`)."""
        if think:
            conversation = with_think_suffix(conversation)
        kwargs = template_kwargs or {}
        if reserved := sorted(self.reserved_template_kwargs & kwargs.keys()):
            raise APIError(
                400,
                f"chat_template_kwargs may not set {', '.join(reserved)}.",
                param="chat_template_kwargs",
                code="invalid_value",
            )
        try:
            prompt = self.tokenizer.apply_chat_template(
                conversation,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                **kwargs,
            )
            prompt.encode()
        except UnicodeError as exc:  # e.g. a lone surrogate from a JSON \ud800 escape
            raise APIError(
                400,
                "The messages hold text that is not valid Unicode.",
                param="messages",
                code="invalid_text",
            ) from exc
        except (ValueError, TemplateError) as exc:  # what the template refuses to render
            raise APIError(
                400,
                f"The chat template cannot render the messages: {exc}",
                param="messages",
                code="invalid_value",
            ) from exc
        request: dict[str, Any] = {"prompt": prompt}
        if audios:
            request["multi_modal_data"] = {"audio": [(a, SAMPLE_RATE) for a in audios]}
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

    async def aclose(self) -> None:
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.turn_pool.shutdown(wait=False, cancel_futures=True)
        await self.voice.aclose()


def _default_system(tokenizer: Any) -> str:
    """The system prompt the checkpoint's template adds when a conversation has none (AF3's
    "You are a helpful assistant."); tools are written after it, as Qwen2.5 writes them after
    its own."""
    try:
        probe = tokenizer.apply_chat_template([{"role": "user", "content": "?"}], tokenize=False)
    except Exception:  # a template that takes no plain-text turn: tools follow no prompt
        return ""
    found = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", probe, re.DOTALL)
    return found.group(1) if found else ""
