"""Stop strings matched on the generated text, one table gather per decoded token.

A stop string can end a turn through many token sequences. `</answer>` is usually `</` `answer`
`>`, but `42 </answer>.` comes out of the SmolLM2 tokenizer as `42` ` </` `answer` `>.`, and a
suffix match on the ids of `</answer>` never fires. So we match on bytes: the stop strings are
compiled into an Aho-Corasick automaton over UTF-8 bytes, and for every (token, automaton
state) pair we precompute the state after the token's bytes and which stop string, if any,
completed inside them. Inside the decode loop a row's match state then advances with one gather,
`table[token, state]`, whatever way the tokenizer split or merged the stop string.

A stop string that completes inside a token (as in `>.` above) ends the row after that token.
The token is kept whole, because training uses the exact ids the sampler produced, so a
completion's text may run a few characters past the stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _byte_level_alphabet() -> dict[str, int]:
    """Character -> byte for byte-level BPE vocabularies (GPT-2 style, used by Qwen and SmolLM2).

    Printable bytes stand for themselves; the other 68 bytes were moved to code points 256 and
    up, in byte order, so that every token is printable.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    moved = [b for b in range(256) if b not in set(printable)]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + i): b for i, b in enumerate(moved)})
    return table


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


def token_bytes(tokenizer, vocab_size: int) -> list[bytes]:
    """The bytes each token id stands for; ids the tokenizer does not know are empty.

    Byte-level vocabularies are read exactly from their token strings. For other tokenizers a
    token's text is `decode([id])`, which is exact for ASCII stop strings.
    """
    n = min(len(tokenizer), vocab_size)
    added = {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    out: list[bytes] = [b""] * vocab_size
    if _is_byte_level(tokenizer):
        alphabet = _byte_level_alphabet()
        for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(n)))):
            if tok is None:
                continue
            if i in added or any(c not in alphabet for c in tok):
                out[i] = tokenizer.decode([i]).encode()
            else:
                out[i] = bytes(alphabet[c] for c in tok)
        return out
    for i in range(n):
        out[i] = tokenizer.decode([i]).encode()
    return out


class StopMatcher:
    """Stop strings compiled into a `[vocab, states]` transition table for the decode loop.

    `table[token, state] = next_state + num_states_padded * match`, with `match` = 1 + the index
    of the stop string that completed inside the token, or 0. State 0 is "nothing matched yet",
    the state every turn starts in. The number of states is padded to a power of two so that
    different stop sets of similar size share one compiled decode program.
    """

    def __init__(self, stops: Sequence[str], token_bytes: Sequence[bytes]):
        if isinstance(stops, str):
            stops = (stops,)
        self.stops = tuple(stops)
        for s in self.stops:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty str, got {s!r}")
        patterns = [s.encode() for s in self.stops]
        # States are the distinct prefixes of the patterns (the trie), shortest first.
        prefixes = sorted({p[:i] for p in patterns for i in range(len(p) + 1)}, key=len)
        state_of = {p: i for i, p in enumerate(prefixes)}
        n_states = len(prefixes)
        self.num_states = n_states
        self.padded_states = 1 << max(0, (n_states - 1).bit_length())

        # A state accepts when one of the patterns is a suffix of its prefix (longest wins).
        accept = np.zeros(n_states, np.int64)
        for q, p in enumerate(prefixes):
            ends = [j for j, pat in enumerate(patterns) if p.endswith(pat)]
            if ends:
                accept[q] = 1 + max(ends, key=lambda j: len(patterns[j]))
        # delta[q, byte]: the longest suffix of prefix_q + byte that is itself a prefix. Bytes
        # that occur in no pattern send every state back to 0.
        delta = np.zeros((n_states, 256), np.int64)
        for c in sorted({c for p in patterns for c in p}):
            for q, p in enumerate(prefixes):
                s = p + bytes([c])
                while s not in state_of:
                    s = s[1:]
                delta[q, c] = state_of[s]

        # Run every token's bytes from every state at once, one byte position at a time.
        vocab = len(token_bytes)
        longest = max((len(b) for b in token_bytes), default=0)
        padded = np.zeros((vocab, max(longest, 1)), np.int64)
        lengths = np.zeros(vocab, np.int64)
        for i, b in enumerate(token_bytes):
            padded[i, : len(b)] = np.frombuffer(b, np.uint8)
            lengths[i] = len(b)
        state = np.broadcast_to(np.arange(n_states), (vocab, n_states)).copy()
        match = np.zeros((vocab, n_states), np.int64)
        for j in range(longest):
            live = np.nonzero(lengths > j)[0]
            nxt = delta[state[live], padded[live, j][:, None]]
            state[live] = nxt
            first = (match[live] == 0) & (accept[nxt] > 0)
            match[live] = np.where(first, accept[nxt], match[live])
        # Once a stop string matched the row is finished, so the state after it does not matter.
        table = np.zeros((vocab, self.padded_states), np.int64)
        table[:, :n_states] = state + self.padded_states * match
        self.table = table.astype(np.int32)

    @classmethod
    def for_tokenizer(cls, stops: Sequence[str], tokenizer, vocab_size: int) -> StopMatcher:
        return cls(stops, token_bytes(tokenizer, vocab_size))

    def match(self, ids: Sequence[int]) -> tuple[int, int | None]:
        """Host reference of what the decode loop does: (tokens consumed, stop index or None)."""
        state = 0
        for n, i in enumerate(ids, start=1):
            code = int(self.table[i, state])
            state, hit = code % self.padded_states, code // self.padded_states
            if hit:
                return n, hit - 1
        return len(ids), None
