"""Structured output: a grammar's next-token mask, applied to the sampler's logits each step.

The library is llguidance. Of the three candidates it is the one that fits here: it installs
from PyPI as a self-contained wheel (xgrammar pulls in torch, which this project never imports
at run time; outlines-core compiles a JSON schema into a regex DFA over the whole vocabulary up
front, which grows with the schema); it reads a HF tokenizer directly (`llguidance.hf`); it
computes masks lazily per step (an Earley parser over a token trie, tens of microseconds per
mask on CPU for SmolLM2's 49k vocabulary); and one grammar language covers both cases we need,
JSON schemas and Lark grammars that embed a schema (`%json {...}`), which is how a tool call is
wrapped in its `<tool_call>` tags.

The mask is computed on the host, one token at a time: the engine decodes a constrained row one
token per turn with the mask passed to `SamplerSession.decode(allowed=...)`. `benchmarks/serve.py`
measures what that costs next to free decoding.
"""

from __future__ import annotations

import json
import weakref
from typing import Any

import numpy as np

_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class GrammarError(ValueError):
    """A schema or grammar the library rejects (the client's fault: a 400)."""


def _ll_tokenizer(tokenizer, vocab_size: int, eos_ids: tuple[int, ...]):
    import llguidance.hf

    per_tok = _TOKENIZERS.setdefault(tokenizer, {})
    key = (vocab_size, eos_ids)
    if key not in per_tok:
        per_tok[key] = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=list(eos_ids)
        )
    return per_tok[key]


def json_schema_grammar(schema: dict[str, Any] | None) -> str:
    """Any JSON object (`json_object`), or a value valid under `schema` (`json_schema`)."""
    import llguidance

    schema = {"type": "object"} if schema is None else schema
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False}
        )
    except (ValueError, TypeError, RuntimeError) as e:
        raise GrammarError(f"bad JSON schema: {e}") from None


def tool_call_grammar(tools: list[dict[str, Any]], open_tag: str, close_tag: str) -> str:
    """One call of one of `tools` ({"name", "parameters"}), wrapped in its tags."""
    import llguidance

    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["name"]},
                "arguments": t.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    # Compact JSON: with free whitespace an untrained model can pad a call without end.
    schema = {**schema, "x-guidance": {"whitespace_flexible": False}}
    lark = f"start: {json.dumps(open_tag)} call {json.dumps(close_tag)}\ncall: %json {json.dumps(schema)}"
    try:
        return llguidance.LLMatcher.grammar_from_lark(lark)
    except (ValueError, TypeError, RuntimeError) as e:
        raise GrammarError(f"bad tool schema: {e}") from None


class Constraint:
    """One generation's grammar state: the mask of allowed next tokens, advanced per token."""

    def __init__(self, grammar: str, tokenizer, vocab_size: int, eos_ids: tuple[int, ...]):
        import llguidance
        import llguidance.numpy as llnp

        self._llnp = llnp
        self.vocab_size = vocab_size
        self.matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer, vocab_size, eos_ids), grammar)
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error())
        self._bits = llnp.allocate_token_bitmask(1, vocab_size)

    def mask(self) -> np.ndarray:
        """Boolean [vocab]: the tokens the grammar allows next (EOS once it is complete)."""
        self._llnp.fill_next_token_bitmask(self.matcher, self._bits, 0)
        bits = np.unpackbits(self._bits[0].view(np.uint8), bitorder="little")
        return bits[: self.vocab_size].astype(bool)

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise RuntimeError(f"grammar rejected token {token}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar admits nothing more (only EOS would follow)."""
        return bool(self.matcher.is_stopped())
