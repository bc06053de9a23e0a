"""af3-serve: an OpenAI-compatible Audio Flamingo 3 server on vLLM's AsyncLLM."""

from importlib.metadata import version

__version__ = version("af3-serve")
