"""Start a real `af3-serve` process on a free port and wait until it is healthy."""

import os
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import ENGINE, Server, launch_af3_serve

API_KEY = "test-key-123"
# Allowlisted by the test servers, yet all of them resolve to addresses audio may never
# come from (loopback, link-local metadata, numeric spellings of 127.0.0.1).
PRIVATE_MEDIA_HOSTS = (
    "127.0.0.1",
    "localhost",
    "::1",
    "169.254.169.254",
    "0x7f000001",
    "2130706433",
    "017700000001",
    "::ffff:127.0.0.1",
)


def start_server(checkpoint: Path, log: Path, *extra: str) -> Server:
    """af3-serve on the tiny checkpoint with the test key: `.url`, `.log_text()`, `.stop()`."""
    cache = ["--cache-dir", str(log.parent / "af3-cache")]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    server = launch_af3_serve(
        checkpoint, log, "--api-key", API_KEY, *ENGINE, *cache, *extra, env=env
    )
    return server.wait_healthy(timeout_s=300)


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Whether `predicate` came true within `timeout` seconds (polled every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False
