"""Server settings, from the command line (`af3-serve --help`)."""

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "nvidia/audio-flamingo-3-hf"
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "af3-serve"


@dataclass(frozen=True)
class EngineSettings:
    """What matters for 10-minute audio: one 600-s prompt is ~15,000 tokens, and vLLM's
    default of 2048 batched tokens would prefill it in eight steps."""

    max_model_len: int = 32768
    max_num_batched_tokens: int = 16384
    max_num_seqs: int = 64
    encoder_cache_tokens: int = 4 * 15000  # audio embeddings of four 10-min clips
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    enforce_eager: bool = False
    seed: int = 0


@dataclass(frozen=True)
class ServerConfig:
    model: str = DEFAULT_MODEL
    served_model_name: str = "audio-flamingo-3"
    think_adapter: str = "auto"  # "auto", "none" or a folder
    think_model_name: str | None = None  # default: served_model_name + "-think"
    cache_dir: Path = DEFAULT_CACHE_DIR
    host: str = "0.0.0.0"
    port: int = 8000
    api_keys: frozenset[str] = frozenset()
    max_audio_seconds: float = 600.0
    max_audios_per_request: int = 8
    max_request_bytes: int = 128 * 2**20
    max_decoded_audio_bytes: int = 512 * 2**20
    allowed_media_domains: frozenset[str] = frozenset()
    allowed_local_media_path: Path | None = None
    max_pending_requests: int = 512
    max_pending_requests_per_key: int = 128
    max_queued_audio_seconds: float = 4 * 3600.0
    allow_private_media_addresses: bool = False
    protect_metrics: bool = False
    request_read_timeout_s: float = 120.0
    audio_decode_workers: int = 4
    engine_death_grace_s: float = 5.0
    demo_page: bool = True
    engine: EngineSettings = field(default_factory=EngineSettings)

    @property
    def think_name(self) -> str:
        return self.think_model_name or f"{self.served_model_name}-think"


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    p = argparse.ArgumentParser(
        prog="af3-serve", description="OpenAI-compatible Audio Flamingo 3 server on vLLM."
    )
    d = ServerConfig()
    e = EngineSettings()
    p.add_argument(
        "--model",
        default=d.model,
        help="HF model id or local folder, in the HF layout or AF3's original llava layout "
        "(converted once into --cache-dir)",
    )
    p.add_argument("--served-model-name", default=d.served_model_name)
    p.add_argument(
        "--think-adapter",
        default=d.think_adapter,
        help="thinking-mode adapter folder, served as a second model; 'auto' (default) "
        "uses the checkpoint's think/ or stage35/ if present, 'none' serves the base alone",
    )
    p.add_argument(
        "--think-model-name", default=None, help="default: the served model name + '-think'"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=d.cache_dir,
        help="converted checkpoints and prepared adapters (default: %(default)s)",
    )
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accepted bearer key (repeatable; also AF3_API_KEY, comma-separated)",
    )
    p.add_argument("--max-audio-seconds", type=float, default=d.max_audio_seconds)
    p.add_argument("--max-audios-per-request", type=int, default=d.max_audios_per_request)
    p.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes)
    p.add_argument("--max-decoded-audio-bytes", type=int, default=d.max_decoded_audio_bytes)
    p.add_argument(
        "--allowed-media-domains",
        nargs="*",
        default=[],
        help="hosts that audio_url may fetch over http(s); none by default",
    )
    p.add_argument(
        "--allowed-local-media-path",
        type=Path,
        default=None,
        help="folder that file:// audio URLs may read from; off by default",
    )
    p.add_argument(
        "--max-pending-requests",
        type=int,
        default=d.max_pending_requests,
        help="requests admitted at once; more get 503 with Retry-After",
    )
    p.add_argument(
        "--max-pending-requests-per-key",
        type=int,
        default=d.max_pending_requests_per_key,
        help="requests one API key (or client address, without keys) may have "
        "in flight; more get 429 with Retry-After",
    )
    p.add_argument(
        "--max-queued-audio-seconds",
        type=float,
        default=d.max_queued_audio_seconds,
        help="audio seconds admitted and not yet answered; more get 503",
    )
    p.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help="file with one accepted key a line (blank lines and # comments skipped)",
    )
    p.add_argument(
        "--allow-private-media-addresses",
        action="store_true",
        help="let allowlisted audio_url hosts resolve to private or loopback "
        "addresses (internal deployments only; off by default against SSRF)",
    )
    p.add_argument(
        "--protect-metrics",
        action="store_true",
        help="require an API key for /metrics (and /version)",
    )
    p.add_argument(
        "--request-read-timeout-s",
        type=float,
        default=d.request_read_timeout_s,
        help="a request body must arrive within this time (slow clients get 408)",
    )
    p.add_argument("--audio-decode-workers", type=int, default=d.audio_decode_workers)
    p.add_argument(
        "--engine-death-grace-s",
        type=float,
        default=d.engine_death_grace_s,
        help="seconds of /health 503 before exiting when the engine dies",
    )
    p.add_argument(
        "--no-demo-page",
        dest="demo_page",
        action="store_false",
        help="do not serve the browser demo page at /",
    )
    p.add_argument("--max-model-len", type=int, default=e.max_model_len)
    p.add_argument("--max-num-batched-tokens", type=int, default=e.max_num_batched_tokens)
    p.add_argument("--max-num-seqs", type=int, default=e.max_num_seqs)
    p.add_argument(
        "--encoder-cache-tokens",
        type=int,
        default=e.encoder_cache_tokens,
        help="audio embeddings kept between prefill steps (15,000 per 10-min clip)",
    )
    p.add_argument("--gpu-memory-utilization", type=float, default=e.gpu_memory_utilization)
    p.add_argument("--tensor-parallel-size", type=int, default=e.tensor_parallel_size)
    p.add_argument("--dtype", default=e.dtype)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--seed", type=int, default=e.seed)
    a = p.parse_args(argv)

    keys = set(a.api_key)
    if a.api_key_file is not None:
        lines = a.api_key_file.read_text().splitlines()
        keys.update(k.strip() for k in lines if k.strip() and not k.lstrip().startswith("#"))
    keys.update(k.strip() for k in os.environ.get("AF3_API_KEY", "").split(",") if k.strip())
    return ServerConfig(
        model=a.model,
        served_model_name=a.served_model_name,
        think_adapter=a.think_adapter,
        think_model_name=a.think_model_name,
        cache_dir=a.cache_dir,
        host=a.host,
        port=a.port,
        api_keys=frozenset(keys),
        max_audio_seconds=a.max_audio_seconds,
        max_audios_per_request=a.max_audios_per_request,
        max_request_bytes=a.max_request_bytes,
        max_decoded_audio_bytes=a.max_decoded_audio_bytes,
        allowed_media_domains=frozenset(h.lower() for h in a.allowed_media_domains),
        allowed_local_media_path=a.allowed_local_media_path,
        max_pending_requests=a.max_pending_requests,
        max_pending_requests_per_key=a.max_pending_requests_per_key,
        max_queued_audio_seconds=a.max_queued_audio_seconds,
        allow_private_media_addresses=a.allow_private_media_addresses,
        protect_metrics=a.protect_metrics,
        request_read_timeout_s=a.request_read_timeout_s,
        audio_decode_workers=a.audio_decode_workers,
        engine_death_grace_s=a.engine_death_grace_s,
        demo_page=a.demo_page,
        engine=EngineSettings(
            max_model_len=a.max_model_len,
            max_num_batched_tokens=a.max_num_batched_tokens,
            max_num_seqs=a.max_num_seqs,
            encoder_cache_tokens=a.encoder_cache_tokens,
            gpu_memory_utilization=a.gpu_memory_utilization,
            tensor_parallel_size=a.tensor_parallel_size,
            dtype=a.dtype,
            enforce_eager=a.enforce_eager,
            seed=a.seed,
        ),
    )
