"""Summarizers for `Summary_context`: the policy model itself, or a deterministic stand-in.

The method's summarizer is the LLM with a summarization system prompt (`stm.summary_request`).
The extractive one keeps the first sentences of every message; scripted runs and tests use it so
that their results do not depend on a model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from agemem_jax.stm import Message, summary_request

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def extractive(sentences_per_message: int = 1, max_chars: int = 2000) -> Callable:
    """Keep the first sentence(s) of each message, tagged with its role, up to `max_chars`."""

    def summarize(messages: Sequence[Message]) -> str:
        lines = []
        for m in messages:
            text = " ".join(m.text.split())
            if not text:
                continue
            head = " ".join(_SENTENCE.split(text)[:sentences_per_message])
            lines.append(f"[{m.role}] {head}")
        return "\n".join(lines)[:max_chars]

    return summarize


def from_chat_model(complete: Callable[[list[dict[str, str]]], str]) -> Callable:
    """Summarize with a chat model: `complete(messages) -> reply text`."""

    def summarize(messages: Sequence[Message]) -> str:
        return complete(summary_request(messages))

    return summarize
