"""Chat rendering as token ids, one message at a time (token-in/token-out).

Every model in the family speaks ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n`. Rendering
each message to its own id segment, split at the special tokens, gives exactly the ids that
tokenizing the whole conversation would, so the memory environment can keep, drop or replace
messages without ever re-tokenizing text the model produced.
"""

from __future__ import annotations

from collections.abc import Sequence

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


class ChatFormat:
    """ChatML over a HF tokenizer. `role_names` maps our roles to what the template calls them."""

    def __init__(self, tokenizer, role_names: dict[str, str] | None = None):
        self.tokenizer = tokenizer
        self.role_names = {
            "system": "system",
            "user": "user",
            "assistant": "assistant",
            "tool": "tool",
        }
        self.role_names.update(role_names or {})
        self.im_start = self._special(IM_START)
        self.im_end = self._special(IM_END)
        self.newline = self.encode("\n")

    def _special(self, token: str) -> int:
        ids = self.tokenizer.convert_tokens_to_ids(token)
        if ids is None or ids == self.tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {token!r} token; it is not a ChatML model")
        return int(ids)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def header(self, role: str) -> list[int]:
        """`<|im_start|>role\\n`: what precedes a message, and the generation prompt."""
        return [self.im_start, *self.encode(self.role_names[role] + "\n")]

    def message(self, role: str, content: str) -> list[int]:
        return self.header(role) + self.encode(content) + self.footer()

    def footer(self) -> list[int]:
        return [self.im_end, *self.newline]

    def conversation(
        self, messages: Sequence[dict], add_generation_prompt: bool = True
    ) -> list[int]:
        ids: list[int] = []
        for m in messages:
            ids += self.message(m["role"], m["content"])
        if add_generation_prompt:
            ids += self.header("assistant")
        return ids

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end an assistant turn: `<|im_end|>` and the tokenizer's EOS."""
        ids = {self.im_end}
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return tuple(sorted(ids))
