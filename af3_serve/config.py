"""Server settings from the command line (`af3-serve --help`).

Two groups of flags: af3-serve's own, declared once below as `ServerSettings` fields whose
docstrings are their help (vLLM's config style, turned into flags by vLLM's own
`get_kwargs`), and every engine flag of `vllm serve`, taken from vLLM's `AsyncEngineArgs`
with AF3's defaults for long audio. Flags that would replace our model are refused.
"""

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs, get_kwargs, optional_type
from vllm.tool_parsers.tool_strict_level import ToolStrictLevelName
from vllm.utils.argparse_utils import FlexibleArgumentParser

from af3_model_executor.constants import (
    DEFAULT_MODEL,
    MAX_AUDIOS_PER_PROMPT,
    THINK_MODEL_SUFFIX,
    served_name,
)

DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "af3-serve"
API_KEY_ENV = "AF3_API_KEY"

# Our engine defaults. Those that depend on the audio length (context, batched tokens,
# encoder cache) are not here: left unset on the command line, `engine.py` sets them from the
# longest audio the checkpoint and --max-audio-seconds allow (`AudioSpec.engine_sizes`).
ENGINE_DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "max_num_seqs": 64,
    "seed": 0,
    # AF3-Chat sends the same long audio again every turn: the cached prefix (audio
    # included) is what keeps later turns from re-encoding and re-prefilling it.
    "enable_prefix_caching": True,
}

# Engine flags we set ourselves and a user may not: flag's dest -> why (and what to use instead).
REFUSED_ENGINE_FLAGS = {
    "limit_mm_per_prompt": "audios per prompt are --max-audios-per-request",
    "model_impl": "it would replace af3-serve's AF3 model with another implementation",
    "runner": "af3-serve serves AF3 for generation only",
    "convert": "af3-serve serves AF3 for generation only",
    "disable_log_stats": "/metrics and the Grafana dashboard need the engine's statistics",
    "skip_tokenizer_init": "af3-serve renders chat prompts with the checkpoint's tokenizer",
}


class SettingsError(ValueError):
    """A flag or combination of flags af3-serve cannot serve; the message says why."""


@dataclass(frozen=True)
class ServerSettings:
    """af3-serve's own flags (the engine's are vLLM's)."""

    think_adapter: str = "auto"
    """Thinking-mode adapter folder, served as a second model; 'auto' uses the checkpoint's
    think/ or stage35/ if present, 'none' serves the base model alone."""
    think_model_name: str | None = None
    """Name of the thinking model in the API (default: the served model name + '-think')."""
    cache_dir: Path = DEFAULT_CACHE_DIR
    """Converted checkpoints and prepared thinking adapters."""
    host: str = "0.0.0.0"
    """Address to listen on."""
    port: int = 8000
    """Port to listen on."""
    api_key: list[str] = field(default_factory=list)
    """Accepted bearer keys (repeatable; also AF3_API_KEY, comma-separated)."""
    api_key_file: Path | None = None
    """File with one accepted key a line (blank lines and # comments skipped)."""
    protect_metrics: bool = False
    """Require an API key for /metrics and /version."""
    max_audio_seconds: float | None = None
    """Longest audio accepted, per audio; longer is refused. Default: the checkpoint's limit
    (its processor config: 600 s AF3, 1200 s Music Flamingo 2601, 1800 s AF-Next), which
    this may only lower."""
    max_transcription_seconds: float = 3 * 3600.0
    """Longest file /v1/audio/transcriptions and /translations accept: they cut it into
    30-s windows at the pauses, so it is not bound by --max-audio-seconds (a chat audio's,
    which the model hears at once). Capped at --max-queued-audio-seconds, as a longer file
    could never be admitted."""
    max_transcription_bytes: int = 512 * 2**20
    """Largest upload to the transcription endpoints (a 3-h 16-kHz FLAC of speech is about
    140 MiB); the upload is spooled to disk, not held in memory, and decoded from there."""
    transcription_windows_in_flight: int = 8
    """30-s windows of one transcription in the engine at once: a long file's later windows
    wait for its earlier ones, so requests that arrive after it are not starved."""
    vad_workers: int = 2
    """Processes that run the voice-activity detector for the transcription endpoints
    (about 1/450 of the audio's duration in CPU; a long file's blocks are shared out), and
    as many threads for realtime sessions' server_vad."""
    max_audios_per_request: int = MAX_AUDIOS_PER_PROMPT
    """Audios one request may carry (the engine's per-prompt limit)."""
    max_request_bytes: int = 128 * 2**20
    """Largest request body; larger gets 413."""
    max_decoded_audio_bytes: int = 512 * 2**20
    """Largest decoded PCM of one request's audio."""
    request_read_timeout_s: float = 120.0
    """A request body must arrive within this time (slow clients get 408)."""
    allow_private_media_addresses: bool = False
    """Let allowlisted audio_url hosts resolve to private or loopback addresses (internal
    deployments only; off by default against SSRF)."""
    max_pending_requests: int = 512
    """Requests admitted at once; more get 503 with Retry-After."""
    max_pending_requests_per_key: int = 128
    """Requests one API key (or client address, without keys) may have in flight; more get
    429 with Retry-After."""
    max_queued_audio_seconds: float = 4 * 3600.0
    """Audio seconds admitted and not yet answered; more get 503."""
    audio_decode_workers: int = 4
    """Threads that decode audio off the event loop."""
    encoder_cache_tokens: int | None = None
    """Audio embeddings the engine keeps between prefill steps; default: four of the
    longest audio (60,000 for AF3's 10 min, 25 a second). vLLM's default holds one batch,
    so a second long audio would wait for the first."""
    responses_store_mib: int = 1024
    """Memory for stored responses (/v1/responses with store, for previous_response_id), their
    audio included; the least recently used go first. In this process only: not kept over a
    restart nor shared between replicas."""
    max_realtime_sessions: int = 64
    """/v1/realtime sessions open at once; a connection past it gets an error event and is
    closed."""
    max_realtime_sessions_per_key: int = 16
    """/v1/realtime sessions one API key (or client address, without keys) may hold open;
    one past it gets an error event and is closed."""
    realtime_idle_timeout_s: float = 600.0
    """A /v1/realtime session that sends no event for this long, with no work in flight,
    gets an error event and is closed."""
    max_realtime_buffer_seconds: float = 600.0
    """Uncommitted audio one realtime session may hold (never more than --max-audio-seconds);
    an append past it gets an error event and is not taken."""
    engine_death_grace_s: float = 5.0
    """Seconds of /health 503 before exiting when the engine dies."""
    demo_page: bool = True
    """Serve the browser demo page at /."""
    # vLLM's frontend flags for chat, same names and meaning as `vllm serve`'s.
    enable_auto_tool_choice: bool = False
    """Enable tool calling (tool_choice "auto", "required" or a function) with the parser
    --tool-call-parser names (vLLM's flag)."""
    tool_call_parser: str | None = None
    """vLLM's tool-call parser that turns the model's text into OpenAI tool calls, e.g.
    hermes (Qwen2.5's format, which af3-serve writes the tools in); any parser vLLM ships or
    a plugin registers (vLLM's flag)."""
    tool_parser_plugin: str = ""
    """A Python file registering more tool parsers with vLLM's ToolParserManager (vLLM's
    flag)."""
    exclude_tools_when_tool_choice_none: bool = False
    """Leave the tools out of the prompt when tool_choice is "none" (vLLM's flag)."""
    tool_strict_level: ToolStrictLevelName = "auto"
    """How far tool calls are constrained (vLLM's flag): 'auto' pins a tool's arguments to
    its schema when the tool says "strict": true, 'function' constrains the call's envelope
    and name for every request with tools, 'parameter' pins every tool's arguments."""
    return_tokens_as_token_ids: bool = False
    """Write logprobs' tokens as 'token_id:N' unless a request says otherwise (vLLM's
    flag)."""


@dataclass(frozen=True)
class ServerConfig(ServerSettings):
    """Everything one server process runs with: our settings, the accepted keys and the
    engine's arguments (the model as given; `engine.py` points it at the prepared files)."""

    api_keys: frozenset[str] = frozenset()
    engine_args: AsyncEngineArgs = field(default_factory=lambda: AsyncEngineArgs(**ENGINE_DEFAULTS))

    @property
    def model(self) -> str:
        return self.engine_args.model

    @property
    def served_model_name(self) -> str:
        names = self.engine_args.served_model_name
        if isinstance(names, list):
            names = names[0]
        return names or served_name(self.model)

    @property
    def allowed_media_domains(self) -> frozenset[str]:
        """Hosts audio_url may fetch over http(s): vLLM's --allowed-media-domains."""
        return frozenset(h.lower() for h in self.engine_args.allowed_media_domains or ())

    @property
    def allowed_local_media_path(self) -> Path | None:
        """The folder file:// audio may come from: vLLM's --allowed-local-media-path."""
        path = self.engine_args.allowed_local_media_path
        return Path(path) if path else None

    @property
    def think_name(self) -> str:
        return self.think_model_name or self.served_model_name + THINK_MODEL_SUFFIX

    @property
    def transcription_seconds_limit(self) -> float:
        """The longest file transcribed: its own limit, within what admission can hold."""
        return min(self.max_transcription_seconds, self.max_queued_audio_seconds)

    def audio_seconds_limit(self, checkpoint_seconds: float) -> float:
        """The longest audio served: the checkpoint's, or lower with --max-audio-seconds."""
        if self.max_audio_seconds is None:
            return checkpoint_seconds
        if self.max_audio_seconds <= 0:
            raise SettingsError("--max-audio-seconds must be above 0")
        if self.max_audio_seconds > checkpoint_seconds:
            raise SettingsError(
                f"--max-audio-seconds {self.max_audio_seconds:g} is above the checkpoint's "
                f"limit of {checkpoint_seconds:g} s; it may only lower it"
            )
        return self.max_audio_seconds


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("af3-serve", "The server's own settings.")
    kwargs = get_kwargs(ServerSettings)
    for f in dataclasses.fields(ServerSettings):
        kw = kwargs[f.name]
        if "Path" in str(f.type):  # vLLM's helper treats non-builtin types as strings
            kw["type"] = optional_type(Path) if "None" in str(f.type) else Path
        if f.default_factory is list:  # repeatable: --api-key a --api-key b
            kw["action"] = "extend"
        group.add_argument("--" + f.name.replace("_", "-"), **kw)


def build_parser() -> FlexibleArgumentParser:
    parser = FlexibleArgumentParser(
        prog="af3-serve",
        description="OpenAI-compatible Audio Flamingo 3 server on vLLM. The group af3-serve "
        "is the server's own; the others are vLLM's engine flags, as `vllm serve` takes them, "
        "with AF3's defaults for long audio. Show a group with --help=GROUP (e.g. "
        "--help=af3-serve, --help=ParallelConfig), flags matching a word with --help=WORD, "
        "everything with --help=all.",
    )
    _add_server_flags(parser)
    AsyncEngineArgs.add_cli_args(parser)
    parser.set_defaults(**ENGINE_DEFAULTS)
    model = next(a for a in parser._actions if a.dest == "model")
    model.help = (
        "HF model id or local folder, in the HF layout or AF3's original llava layout "
        "(converted once into --cache-dir)."
    )
    served = next(a for a in parser._actions if a.dest == "served_model_name")
    served.help = (
        "The model's name in the API; default: --model's hub or folder name without the "
        "'-hf' of transformers' ports (nvidia/audio-flamingo-3-hf is audio-flamingo-3). "
        "Requests may also name --model itself."
    )
    return parser


def _check_engine_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for dest, why in REFUSED_ENGINE_FLAGS.items():
        if getattr(args, dest) != parser.get_default(dest):
            flag = "--" + dest.replace("_", "-")
            raise SettingsError(f"{flag} is not accepted: {why}")
    overrides = args.hf_overrides if isinstance(args.hf_overrides, dict) else {}
    if "architectures" in overrides:
        raise SettingsError(
            "--hf-overrides may not set 'architectures': af3-serve runs its own AF3 model"
        )
    names = args.served_model_name
    if isinstance(names, list) and len(names) > 1:
        raise SettingsError("--served-model-name takes one name (the thinking model has its own)")


def _check_tool_flags(args: argparse.Namespace) -> None:
    """vLLM's start-up checks of its tool flags."""
    from vllm.tool_parsers import ToolParserManager

    if args.tool_parser_plugin:
        ToolParserManager.import_tool_parser(args.tool_parser_plugin)
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise SettingsError("--enable-auto-tool-choice requires --tool-call-parser")
    known = ToolParserManager.list_registered()
    if args.tool_call_parser is not None and args.tool_call_parser not in known:
        raise SettingsError(
            f"--tool-call-parser {args.tool_call_parser} is not a tool parser vLLM knows; "
            f"choose from {', '.join(sorted(known))}"
        )


def _check_settings(args: argparse.Namespace) -> None:
    if args.max_transcription_seconds <= 0:
        raise SettingsError("--max-transcription-seconds must be above 0")
    if args.transcription_windows_in_flight < 1:
        raise SettingsError("--transcription-windows-in-flight must be at least 1")
    if args.vad_workers < 1:
        raise SettingsError("--vad-workers must be at least 1")


def _api_keys(settings: argparse.Namespace) -> frozenset[str]:
    keys = set(settings.api_key)
    if settings.api_key_file is not None:
        lines = settings.api_key_file.read_text().splitlines()
        keys.update(k.strip() for k in lines if k.strip() and not k.lstrip().startswith("#"))
    keys.update(k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip())
    return frozenset(keys)


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    """Raises SettingsError for flags af3-serve refuses; argparse exits on malformed ones."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_engine_flags(args, parser)
    _check_tool_flags(args)
    _check_settings(args)
    ours = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerSettings)}
    try:
        api_keys = _api_keys(args)
    except OSError as exc:
        raise SettingsError(f"--api-key-file: {exc}") from exc
    return ServerConfig(**ours, api_keys=api_keys, engine_args=AsyncEngineArgs.from_cli_args(args))
