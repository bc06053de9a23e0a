"""Start a real `af3-serve` process on a free port and wait until it is healthy."""

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.compare_servers import af3_serve_command, free_port

API_KEY = "test-key-123"


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(checkpoint: Path, log: Path, *extra: str) -> ServerProcess:
    port = free_port()
    command = af3_serve_command(
        checkpoint,
        port,
        "--api-key",
        API_KEY,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "32768",
        "--max-num-batched-tokens",
        "16384",
        "--cache-dir",
        str(log.parent / "af3-cache"),
        *extra,
    )
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"af3-serve exited during start:\n{server.log_text()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"af3-serve did not become healthy:\n{server.log_text()[-4000:]}")
