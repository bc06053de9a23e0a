"""Where the tests find the repository and keep what they build (checkpoints, audio)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "tests"
