"""af3-infer as a subprocess: in-process on a checkpoint, or against a server."""

import subprocess
import sys

from tests.support.server import API_KEY

QUESTION = "What is said in the audio?"


def infer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "af3_serve.tools.infer", "--text", QUESTION, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def remote(server, *args: str) -> subprocess.CompletedProcess:
    return infer("--url", server.url, "--api-key", API_KEY, *args)
