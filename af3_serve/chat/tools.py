"""Tool calling, as `vllm serve` does it: vLLM's tool parsers by name
(`--enable-auto-tool-choice --tool-call-parser NAME`), composed by vLLM's `ParserManager`;
`tool_choice` "required" and a named function constrained through structured outputs by the
parser's own `adjust_request`; the model's text parsed back into OpenAI tool calls, whole or
as stream deltas."""

from dataclasses import dataclass
from typing import Any

from vllm.entrypoints.generate.base.protocol import DeltaMessage
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionNamedToolChoiceParam,
)
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest as VllmChatRequest,
)
from vllm.parser.abstract_parser import Parser
from vllm.parser.parser_manager import ParserManager
from vllm.renderers.chat_utils import make_tool_call_id
from vllm.tokenizers import TokenizerLike

from af3_serve.chat.protocol import DeltaFunctionCall, DeltaToolCall
from af3_serve.edge.errors import APIError
from af3_serve.protocol import FunctionCall, ToolCall

AUTO_FLAGS = "--enable-auto-tool-choice and --tool-call-parser"


def named_function(request: VllmChatRequest) -> str | None:
    choice = request.tool_choice
    return choice.function.name if isinstance(choice, ChatCompletionNamedToolChoiceParam) else None


@dataclass(frozen=True)
class ToolCalling:
    """The server's tool-call settings (vLLM's frontend flags of the same names)."""

    parser_cls: type[Parser] | None
    tokenizer: TokenizerLike
    model_config: Any
    exclude_tools_when_tool_choice_none: bool = False

    @classmethod
    def from_flags(
        cls,
        tool_call_parser: str | None,
        enable_auto_tool_choice: bool,
        exclude_tools_when_tool_choice_none: bool,
        tool_strict_level: str,
        tokenizer: TokenizerLike,
        model_config: Any,
    ) -> "ToolCalling":
        # As vLLM: the parser is in use only with --enable-auto-tool-choice.
        parser_cls = ParserManager.get_parser(
            tool_parser_name=tool_call_parser,
            enable_auto_tools=enable_auto_tool_choice,
            tool_strict_level=tool_strict_level,
            model_name=model_config.model,
            tokenizer=tokenizer,
        )
        return cls(parser_cls, tokenizer, model_config, exclude_tools_when_tool_choice_none)

    def check(self, request: VllmChatRequest) -> VllmChatRequest:
        """vLLM's refusals of a tool_choice no parser serves (400 naming the flags); then
        the parser's `adjust_request`: "required" and a named function become a
        structured-output constraint on the answer (a JSON list of calls, or the named
        function's arguments)."""
        choice = request.tool_choice
        if self.parser_cls is None and choice not in (None, "none"):
            if choice == "auto":
                message = f'"auto" tool choice requires {AUTO_FLAGS} to be set'
            else:
                name = named_function(request)
                what = f'function "{name}"' if name else f'"{choice}"'
                message = f"tool_choice={what} requires {AUTO_FLAGS} to be set"
            raise APIError(400, message, param="tool_choice", code="tool_parser_not_set")
        if self.parser_cls is not None and request.tools and choice not in (None, "none"):
            request = self.new_parser(request).adjust_request(request)
        return request

    def tool_dicts(self, request: VllmChatRequest) -> list[dict[str, Any]] | None:
        """The tools as the chat template gets them (as vLLM passes them)."""
        if request.tools is None or (
            request.tool_choice == "none" and self.exclude_tools_when_tool_choice_none
        ):
            return None
        return [tool.model_dump() for tool in request.tools]

    def new_parser(self, request: VllmChatRequest) -> Parser | None:
        """One parser per answer (choice): parsers keep the state of a stream."""
        if self.parser_cls is None or not request.tools:
            return None
        return self.parser_cls(self.tokenizer, request.tools, model_config=self.model_config)


def parse_answer(
    parser: Parser | None, text: str, token_ids: Any, request: VllmChatRequest
) -> tuple[str | None, list[ToolCall]]:
    """A whole answer's content and tool calls, as vLLM's chat server splits them."""
    if parser is None or request.tool_choice in (None, "none"):
        return text, []
    _, content, calls = parser.parse(
        text, request, enable_auto_tools=True, model_output_token_ids=token_ids
    )
    tool_calls = [
        ToolCall(
            id=call.id or make_tool_call_id(),
            function=FunctionCall(name=call.name, arguments=call.arguments),
        )
        for call in calls or []
    ]
    if request.parallel_tool_calls is False:
        tool_calls = tool_calls[:1]
    if named_function(request) is not None or request.tool_choice == "required":
        content = content or None
    return content, tool_calls


def delta_tool_calls(delta: DeltaMessage, request: VllmChatRequest) -> list[DeltaToolCall]:
    """A parser's stream delta's tool-call pieces in OpenAI's shape."""
    calls = [
        DeltaToolCall(
            index=call.index,
            id=call.id,
            type=call.type,
            function=DeltaFunctionCall(name=call.function.name, arguments=call.function.arguments)
            if call.function is not None
            else None,
        )
        for call in delta.tool_calls
    ]
    if request.parallel_tool_calls is False:
        calls = [call for call in calls if call.index == 0]
    return calls


def finish_reason(request: VllmChatRequest, called: bool, reason: str | None) -> str | None:
    """OpenAI's: "tool_calls" when the model called a tool on its own ("auto", "required"),
    "stop" for a named function."""
    if called and reason == "stop" and named_function(request) is None:
        return "tool_calls"
    return reason
