"""What the chat endpoint holds for the server's life: its tool-call settings (vLLM's
parser, checked against the tokenizer at start, as `vllm serve` does) and the tokens' raw
bytes for logprobs. Built once when the app starts."""

from dataclasses import dataclass

from fastapi import Request

from af3_serve.chat.logprobs import TokenBytes, token_bytes_of
from af3_serve.chat.tools import ToolCalling
from af3_serve.runtime import Runtime


@dataclass(frozen=True)
class ChatSetup:
    tools: ToolCalling
    token_bytes: TokenBytes

    @classmethod
    def build(cls, runtime: Runtime) -> "ChatSetup":
        config = runtime.config
        tools = ToolCalling.from_flags(
            config.tool_call_parser,
            config.enable_auto_tool_choice,
            config.exclude_tools_when_tool_choice_none,
            config.tool_strict_level,
            runtime.engine.renderer.get_tokenizer(),
            runtime.engine.model_config,
        )
        return cls(tools, token_bytes_of(runtime.inputs.tokenizer))


def get_chat_setup(request: Request) -> ChatSetup:
    """A FastAPI dependency: the process's chat setup."""
    return request.app.state.chat
