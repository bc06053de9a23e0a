"""`af3-infer`: one question about one or more audio files, one answer.

AF3's own `infer_audio.py`, served fast: without `--url` it runs our vLLM model in this
process (vLLM's offline `LLM`); with `--url` it asks a running af3-serve and streams the
answer as it is generated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from af3_model_executor.constants import SAMPLE_RATE
from af3_serve.tools.common import (
    add_api_key_arg,
    add_sampling_args,
    api_key,
    audio_part,
    base_url,
    sampling_body,
    served_model,
    session_headers,
    thinking_body,
)

# vLLM, numpy and the model files are imported in-process only: `--url` needs none of them.
if TYPE_CHECKING:
    import numpy as np
    from vllm import LLM, RequestOutput
    from vllm.lora.request import LoRARequest

    from af3_serve.model_files import ModelFiles


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    audio_tokens: int


@dataclass
class Answer:
    answer: str
    finish_reason: str | None
    usage: Usage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="af3-infer", description="Ask Audio Flamingo 3 one question about audio."
    )
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint (HF id or path) in-process, default nvidia/audio-flamingo-3-hf; "
        "with --url the served model name, default the server's (its /v1/models)",
    )
    p.add_argument("--text", required=True, help="the question")
    p.add_argument("--audio", nargs="+", type=Path, required=True, metavar="FILE")
    add_sampling_args(p)
    p.add_argument("--json", action="store_true", help="print answer and usage as JSON")
    p.add_argument("--url", default=None, help="a running af3-serve, e.g. http://host:8000")
    add_api_key_arg(p)
    engine = p.add_argument_group("in-process engine (without --url)")
    engine.add_argument("--dtype", default=None, help="default: float32 on CPU, else auto")
    engine.add_argument("--max-model-len", type=int, default=None)
    engine.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    engine.add_argument("--tensor-parallel-size", type=int, default=1)
    args = p.parse_args(argv)
    for path in args.audio:
        if not path.is_file():
            p.error(f"no such audio file: {path}")
    return args


def ask_server(args: argparse.Namespace, text: str, echo: bool) -> Answer:
    import openai

    key = api_key(args.api_key)
    client = openai.OpenAI(base_url=base_url(args.url), api_key=key)
    try:
        model = args.model or served_model(args.url, key)
    except RuntimeError as exc:
        sys.exit(f"af3-infer: error: {exc}")
    content = [*(audio_part(path) for path in args.audio), {"type": "text", "text": text}]
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        stream=True,
        stream_options={"include_usage": True},
        **sampling_body(args),
        **thinking_body(args),
        extra_headers=session_headers(),
    )
    parts: list[str] = []
    finish_reason = None
    usage = Usage(0, 0, 0, 0)
    for chunk in stream:
        if chunk.usage is not None:
            details = chunk.usage.prompt_tokens_details
            usage = Usage(
                chunk.usage.prompt_tokens,
                chunk.usage.completion_tokens,
                chunk.usage.total_tokens,
                details.audio_tokens if details else 0,
            )
        for choice in chunk.choices:
            finish_reason = choice.finish_reason or finish_reason
            if choice.delta.content:
                parts.append(choice.delta.content)
                if echo:
                    print(choice.delta.content, end="", flush=True)
    if echo:
        print()
    return Answer("".join(parts), finish_reason, usage)


def run_in_process(args: argparse.Namespace, text: str) -> Answer:
    # Unset, vLLM's CPU build takes its KV cache as a share of all memory; one answer needs
    # little (GiB; ignored on GPUs).
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # vLLM logs to stdout by default; stdout is for the answer (and --json).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    import librosa
    from vllm import SamplingParams

    audios = [librosa.load(path, sr=SAMPLE_RATE, mono=True)[0] for path in args.audio]
    files = _model_files(args)
    llm = _offline_engine(args, files, len(audios))
    request, lora = _engine_request(llm, files, text, audios, args.think)
    params = SamplingParams(**sampling_body(args))
    (output,) = llm.generate(request, params, use_tqdm=False, lora_request=lora)
    return _answer(llm, output)


def _model_files(args: argparse.Namespace) -> ModelFiles:
    """The checkpoint, converted if it is in the original layout, and its thinking adapter
    when --think asks for it; a checkpoint without one is an error."""
    from af3_model_executor.constants import DEFAULT_MODEL
    from af3_serve.config import DEFAULT_CACHE_DIR
    from af3_serve.model_files import ModelFilesError, resolve_model_files

    think_adapter = "auto" if args.think else "none"
    try:
        files = resolve_model_files(args.model or DEFAULT_MODEL, think_adapter, DEFAULT_CACHE_DIR)
    except ModelFilesError as exc:
        sys.exit(f"af3-infer: error: {exc}")
    if args.think and files.think is None:
        sys.exit(f"af3-infer: error: {files.model_dir} has no thinking adapter (think/)")
    return files


def _offline_engine(args: argparse.Namespace, files: ModelFiles, audios: int) -> LLM:
    from vllm import LLM
    from vllm.platforms import current_platform

    from af3_serve.engine import engine_kwargs

    # The longest audio the checkpoint takes fits the context and prefills in one step.
    kwargs = engine_kwargs(files, max_audios=audios)
    if args.max_model_len:
        kwargs["max_model_len"] = args.max_model_len
    return LLM(
        # Our model class (never vLLM's built-in AF3), with the thinking LoRA if asked for.
        **kwargs,
        dtype=args.dtype or ("float32" if current_platform.is_cpu() else "auto"),
        # One answer: compiling graphs and capturing CUDA graphs costs more than it saves.
        enforce_eager=True,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size,
        seed=0 if args.seed is None else args.seed,
    )


def _engine_request(
    llm: LLM, files: ModelFiles, text: str, audios: list[np.ndarray], think: bool
) -> tuple[dict[str, Any], LoRARequest | None]:
    """The prompt as the server would render it, its audio, and the thinking LoRA."""
    from af3_serve.inputs.prompts import with_think_suffix

    # The checkpoint's chat template puts one <sound> per audio where the server would.
    content = [{"type": "audio"}] * len(audios) + [{"type": "text", "text": text}]
    conversation = [{"role": "user", "content": content}]
    if think:
        conversation = with_think_suffix(conversation)
    prompt = llm.get_tokenizer().apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=True
    )
    request = {"prompt": prompt, "multi_modal_data": {"audio": [(a, SAMPLE_RATE) for a in audios]}}
    lora = None
    if files.think is not None:
        lora = files.think.lora_request("think")
        if kwargs := files.think.mm_processor_kwargs():
            request["mm_processor_kwargs"] = kwargs
    return request, lora


def _answer(llm: LLM, output: RequestOutput) -> Answer:
    completion = output.outputs[0]
    audio_token_id = llm.llm_engine.model_config.hf_config.audio_token_id
    prompt_ids = output.prompt_token_ids or []
    usage = Usage(
        len(prompt_ids),
        len(completion.token_ids),
        len(prompt_ids) + len(completion.token_ids),
        prompt_ids.count(audio_token_id),
    )
    return Answer(completion.text, completion.finish_reason, usage)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    text = args.text.strip()
    if args.url:
        answer = ask_server(args, text, echo=not args.json)
    else:
        answer = run_in_process(args, text)
        if not args.json:
            print(answer.answer)
    if args.json:
        json.dump(asdict(answer), sys.stdout, ensure_ascii=False)
        print()


if __name__ == "__main__":  # vLLM starts its engine in spawned processes
    main()
