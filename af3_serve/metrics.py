"""af3-serve's own Prometheus metrics; vLLM's `vllm:*` metrics share the registry."""

from prometheus_client import Counter, Gauge, Histogram

AUDIO_SECONDS = Counter("af3_audio_seconds_received_total", "Seconds of decoded audio received.")
AUDIO_DECODE_SECONDS = Histogram(
    "af3_audio_decode_seconds",
    "Time to fetch and decode one request's audio.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REQUEST_AUDIO_SECONDS = Histogram(
    "af3_request_audio_duration_seconds",
    "Total audio duration of one request.",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 2400),
)
REQUESTS = Counter(
    "af3_requests_total", "Answered HTTP requests, by path and status.", ["endpoint", "status"]
)
# Paths counted under their own name; anything else is "other", so scans of random URLs
# cannot blow up the label set.
KNOWN_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/tokenize",
        "/detokenize",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/models",
        "/health",
        "/version",
        "/metrics",
    }
)
REJECTED = Counter("af3_requests_rejected_total", "Requests refused, by reason.", ["reason"])
CLIENT_DISCONNECTS = Counter(
    "af3_client_disconnects_total",
    "Requests whose client left before the answer was complete; their engine work is aborted.",
    ["endpoint"],
)
IN_FLIGHT = Gauge("af3_requests_in_flight", "Requests admitted and not finished.")
TIME_TO_FIRST_TOKEN = Histogram(
    "af3_time_to_first_token_seconds",
    "From request arrival to the first generated token, whether streamed or answered whole.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80),
)
REALTIME_SESSIONS = Gauge("af3_realtime_sessions_open", "Open /v1/realtime sessions.")
REALTIME_SESSIONS_TOTAL = Counter(
    "af3_realtime_sessions_total", "/v1/realtime sessions opened, by type.", ["type"]
)
REALTIME_TURNS = Counter(
    "af3_realtime_turns_total",
    "Realtime turns: committed audio transcribed and responses, by kind and outcome.",
    ["kind", "outcome"],
)
REALTIME_AUDIO_SECONDS = Counter(
    "af3_realtime_audio_seconds_total", "Seconds of audio committed in realtime sessions."
)
REALTIME_ERRORS = Counter(
    "af3_realtime_error_events_total", "Error events sent to realtime clients, by code.", ["code"]
)

# Every label value the counters above take, so that each series exists at 0 from the start:
# Grafana's panels and rate() alerts see 0 instead of "No data" before the first event.
REJECT_REASONS = (
    "too_many_pending",
    "too_many_pending_for_client",
    "audio_backlog",
    "engine_dead",
    "body_too_large",
    "body_read_timeout",
    "realtime_sessions",
    "realtime_sessions_for_client",
)
DISCONNECT_ENDPOINTS = (
    ("upload",)
    + tuple(
        endpoint + stage
        for endpoint in (
            "chat",
            "completions",
            "responses",
            "tokenize",
            "transcriptions",
            "translations",
        )
        for stage in ("_prepare", "", "_stream")
    )
    + ("realtime",)
)  # a realtime session's engine work, cut off by its socket


def initialise_labels() -> None:
    for reason in REJECT_REASONS:
        REJECTED.labels(reason)
    for endpoint in DISCONNECT_ENDPOINTS:
        CLIENT_DISCONNECTS.labels(endpoint)
    for kind in ("realtime", "transcription"):
        REALTIME_SESSIONS_TOTAL.labels(kind)
    for kind in ("transcription", "response"):
        for outcome in ("completed", "failed", "cancelled"):
            REALTIME_TURNS.labels(kind, outcome)
