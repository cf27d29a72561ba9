"""The stream events of one assistant message, built the way a real provider emits them.

The offline models (`offline.OfflineModel` and its subclasses) describe a reply as text and/or
tool calls; `reply_events` turns it into the exact sequence strands' `process_stream` consumes
from Bedrock, OpenAI or Ollama: messageStart, one contentBlockStart/Delta.../Stop per block,
messageStop with "tool_use" or "end_turn", then metadata with usage and latency.

Usage is counted in words (whitespace-separated), so it is non-zero and deterministic.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from strands.types.content import Messages
from strands.types.streaming import StreamEvent


@dataclass(frozen=True)
class ToolCall:
    """One tool call an embedded model makes: the tool's name and its input.

    `tool_use_id` is generated when left out; give one to make a test's ids predictable.
    """

    name: str
    input: dict[str, Any] = field(default_factory=dict)
    tool_use_id: str | None = None


def new_tool_use_id() -> str:
    """A fresh id in the style of Bedrock's (`tooluse_` and 22 characters)."""
    return f"tooluse_{uuid.uuid4().hex[:22]}"


def count_words(text: str) -> int:
    """The embedded models' unit of "tokens": whitespace-separated words."""
    return len(text.split())


def _block_words(block: Any) -> int:
    words = 0
    if "text" in block:
        words += count_words(block["text"] or "")
    if "toolUse" in block:
        tool_use = block["toolUse"]
        words += 1 + count_words(json.dumps(tool_use.get("input", {}), default=str))
    if "toolResult" in block:
        for item in block["toolResult"].get("content", []):
            if "text" in item:
                words += count_words(item["text"] or "")
            if "json" in item:
                words += count_words(json.dumps(item["json"], default=str))
    return words


def count_input_words(messages: Messages, system_prompt: str | None = None) -> int:
    """Words in the system prompt and every text, tool input and tool result of `messages`."""
    words = count_words(system_prompt or "")
    for message in messages:
        for block in message.get("content", []):
            words += _block_words(block)
    return words


def reply_words(text_deltas: Sequence[str], tool_calls: Sequence[ToolCall]) -> int:
    """Output words of a reply: its text plus each call's name and JSON input."""
    words = count_words("".join(text_deltas))
    for call in tool_calls:
        words += 1 + count_words(json.dumps(call.input, default=str))
    return words


def text_block_events(deltas: Sequence[str], index: int) -> Iterator[StreamEvent]:
    """One text content block, streamed as the given deltas."""
    yield {"contentBlockStart": {"contentBlockIndex": index, "start": {}}}
    for delta in deltas:
        yield {"contentBlockDelta": {"contentBlockIndex": index, "delta": {"text": delta}}}
    yield {"contentBlockStop": {"contentBlockIndex": index}}


def tool_use_block_events(call: ToolCall, index: int) -> Iterator[StreamEvent]:
    """One toolUse content block: name and id at the start, the input as one JSON delta."""
    tool_use_id = call.tool_use_id or new_tool_use_id()
    yield {
        "contentBlockStart": {
            "contentBlockIndex": index,
            "start": {"toolUse": {"name": call.name, "toolUseId": tool_use_id}},
        }
    }
    yield {
        "contentBlockDelta": {
            "contentBlockIndex": index,
            "delta": {"toolUse": {"input": json.dumps(call.input, default=str)}},
        }
    }
    yield {"contentBlockStop": {"contentBlockIndex": index}}


def reply_events(
    text_deltas: Sequence[str],
    tool_calls: Sequence[ToolCall],
    input_tokens: int,
    started: float,
) -> Iterator[StreamEvent]:
    """Every event of one assistant message: text first (if any), then the tool calls.

    `started` is the `time.perf_counter()` reading taken when the request arrived; the metadata
    event reports the time since then as the latency.
    """
    yield {"messageStart": {"role": "assistant"}}
    index = 0
    if text_deltas:
        yield from text_block_events(text_deltas, index)
        index += 1
    for call in tool_calls:
        yield from tool_use_block_events(call, index)
        index += 1
    yield {"messageStop": {"stopReason": "tool_use" if tool_calls else "end_turn"}}
    output_tokens = reply_words(text_deltas, tool_calls)
    yield {
        "metadata": {
            "usage": {
                "inputTokens": input_tokens,
                "outputTokens": output_tokens,
                "totalTokens": input_tokens + output_tokens,
            },
            "metrics": {"latencyMs": round((time.perf_counter() - started) * 1000)},
        }
    }
