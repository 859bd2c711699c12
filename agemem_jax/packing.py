"""Pack step rows into a few fixed-shape micro-batches (host side, numpy).

Every agent step is its own training row: the prompt tokens the policy saw at step t and the
action tokens it produced (memory tools edit the context, so a trajectory is no single
sequence). Rows are short and ragged; packing several into one fixed-length row, with segment
ids that keep them from attending to each other and positions that restart at 0 for each, is
where update throughput comes from. Row lengths are bucketed (powers of two and, by default, the
midpoints 1.5x between them) and rows per micro-batch to powers of two, so an update compiles a
handful of programs, not one per batch.

Shared prefixes. Within a trajectory the context usually only grows: step t+1's prompt is step
t's prompt, its action and the observation after it, until a memory tool edits the context or a
stage resets it. With `merge_prefixes`, such a run of step rows becomes one chain packed as the
last row's sequence, so the prefix is computed once instead of once per step (a K-step chain
costs its longest row, not K rows). The model reads exactly the tokens and positions each step
row would have read alone (causal attention sees only the prefix), every action keeps its own
mask, old log-probs and advantage, and `loss_ids` keeps the step rows apart for the per-row
aggregations, so the loss is the same; only the compute drops.

Arrays are aligned with the *prediction* position: at position t the model reads
`input_ids[t]` and is scored on `targets[t]`. A step row of n tokens therefore occupies n − 1
positions (its last token is never an input whose prediction matters), and `loss_mask` is 1
exactly where `targets` is a policy-generated action token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from agemem_jax.dataclass_config import build

A = TypeVar("A")


@dataclasses.dataclass
class StepRow:
    """One experience e_t: prompt (context) tokens, action tokens and what GRPO needs of them.

    `old_logprobs` are the sampler's raw (temperature-1) log-probs of the action tokens, π_old.
    `action_mask` marks which action tokens the policy generated (default: all); tokens the host
    forced into the action (e.g. a completed stop sequence) get 0. SFT rows leave
    `old_logprobs` as None. `sampler_logprobs` are the log-probs under the distribution the
    sampler actually drew from (μ: temperature, top-k, top-p applied); None means μ = π_old
    (default sampling), which makes the importance weight exactly 1.
    """

    prompt_ids: Sequence[int] | np.ndarray
    action_ids: Sequence[int] | np.ndarray
    old_logprobs: Sequence[float] | np.ndarray | None = None
    advantage: float = 0.0
    action_mask: Sequence[bool] | np.ndarray | None = None
    sampler_logprobs: Sequence[float] | np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    """Shapes of the packed micro-batches.

    A micro-batch is `[rows, row_len]` with rows · row_len ≈ `tokens_per_micro` (the memory knob:
    activations of one forward/backward). `row_len` is the smallest bucket that holds the
    longest chain: `min_row_len` times a power of two, split into `row_len_steps` equal steps
    per doubling (2: 128, 192, 256, 384, 512, 768, ...). Finer steps pad less (a 152-token row
    costs 192 positions, not 256) and compile a few more shapes. `row_multiple` is set by the
    trainer to the number of batch shards so every micro-batch splits evenly across devices.
    """

    # Tokens per micro-batch. 16,384 = `max_row_len`, so one spec-length row (T_max + the max
    # response) always fits one micro-batch; CPU presets name a smaller value.
    tokens_per_micro: int = 16_384
    min_row_len: int = 128  # shortest packed row
    row_len_steps: int = 2  # row-length buckets per doubling of min_row_len (1: powers of two)
    max_row_len: int = 16_384  # T_max 8192 + max response 2048, rounded up to a power of two
    row_multiple: int = 1  # rows per micro-batch divide by this (the trainer lcm's in its shards)
    merge_prefixes: bool = True  # pack a step row into the previous one when it extends it

    def __post_init__(self):
        sizes = (self.tokens_per_micro, self.min_row_len, self.max_row_len, self.row_multiple,
                 self.row_len_steps)  # fmt: skip
        if min(sizes) < 1:
            raise ValueError(f"packing sizes must be >= 1: {self}")
        if self.min_row_len % self.row_len_steps:
            raise ValueError(
                f"row_len_steps={self.row_len_steps} must divide min_row_len={self.min_row_len} "
                "(every bucket is a whole number of tokens)"
            )
        if self.max_row_len < self.min_row_len:
            raise ValueError(f"max_row_len {self.max_row_len} < min_row_len {self.min_row_len}")


class PackedBatch(NamedTuple, Generic[A]):
    """One micro-batch; every field is `[rows, row_len]`. A pytree, so it goes straight to jit.

    `A` is what the leaves are: host `np.ndarray`s from `pack`, device arrays inside the jitted
    update, or shardings and abstract shapes when the update is lowered.
    """

    input_ids: A  # int32
    targets: A  # int32, the token predicted at each position
    positions: A  # int32, restart at 0 for every step row
    segment_ids: A  # int32, 1..n per packed row, 0 = padding (what attends to what)
    loss_mask: A  # float32, 1 where targets is a policy-generated token
    old_logp: A  # float32, π_old of targets (0 where masked)
    advantages: A  # float32, the step row's advantage on its action positions
    loss_ids: A  # int32, 1..n: which step row a loss position belongs to; 0 elsewhere
    sampler_logp: A  # float32, log μ of targets; equal to old_logp where μ = π_old

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[attr-defined]


@dataclasses.dataclass
class Packed:
    """Micro-batches plus where each step row went, for statistics and unpacking."""

    micro_batches: list[PackedBatch]
    # per input step row: (micro, row, start, n_positions, first_action_position) or None if
    # the row carried no loss token and was left out. Rows of one chain share `start`.
    locations: list[tuple[int, int, int, int, int] | None]
    real_tokens: int
    dropped: int
    filled_rows: int = 0  # packed rows that hold data (the rest of the micro-batches is padding)

    @property
    def padded_tokens(self) -> int:
        return sum(int(np.prod(mb.shape)) for mb in self.micro_batches)

    @property
    def padding_waste(self) -> float:
        """Fraction of computed positions that are padding."""
        return 1.0 - self.real_tokens / max(self.padded_tokens, 1)

    @property
    def loss_tokens(self) -> int:
        return int(sum(mb.loss_mask.sum() for mb in self.micro_batches))

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [mb.shape for mb in self.micro_batches]

    def action_values(self, per_micro: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """Per-position values (e.g. trainer log-probs, one `[rows, row_len]` array per
        micro-batch) -> one array per input step row, aligned with its action tokens."""
        out: list[np.ndarray | None] = []
        for loc in self.locations:
            if loc is None:
                out.append(None)
                continue
            m, r, start, n, first = loc
            out.append(np.asarray(per_micro[m])[r, start + first : start + n])
        return out


def _next_bucket(n: int, base: int, cap: int, steps: int = 1) -> int:
    """The smallest `base * 2**k * (1 + i / steps)` (0 <= i < steps) that holds `n`, capped at
    `cap` when `n` fits under it."""
    size = base
    while size * 2 < n:
        size *= 2
    bucket = next((size + size * i // steps for i in range(steps) if size + size * i // steps >= n),
                  size * 2)  # fmt: skip
    return min(bucket, cap) if n <= cap else bucket


def _row_arrays(row: StepRow, index: int):
    prompt = np.asarray(row.prompt_ids, np.int64).reshape(-1)
    action = np.asarray(row.action_ids, np.int64).reshape(-1)
    if prompt.size == 0:
        raise ValueError(f"step row {index}: empty prompt (the first action token needs context)")
    n_act = action.size
    mask = np.ones(n_act, np.float32)
    if row.action_mask is not None:
        mask = np.asarray(row.action_mask, np.float32).reshape(-1)
        if mask.size != n_act:
            raise ValueError(f"step row {index}: action_mask has {mask.size} != {n_act} entries")
    old = np.zeros(n_act, np.float32)
    if row.old_logprobs is not None:
        old = np.asarray(row.old_logprobs, np.float32).reshape(-1)
        if old.size != n_act:
            raise ValueError(f"step row {index}: {old.size} old log-probs for {n_act} actions")
        if not np.all(np.isfinite(old[mask > 0])):
            raise ValueError(f"step row {index}: non-finite old log-prob on a loss token")
    sampler = old
    if row.sampler_logprobs is not None:
        if row.old_logprobs is None:
            raise ValueError(f"step row {index}: sampler log-probs without old log-probs")
        sampler = np.asarray(row.sampler_logprobs, np.float32).reshape(-1)
        if sampler.size != n_act:
            raise ValueError(f"step row {index}: {sampler.size} sampler log-probs for {n_act}")
        if not np.all(np.isfinite(sampler[mask > 0])):
            raise ValueError(f"step row {index}: non-finite sampler log-prob on a loss token")
    if not np.isfinite(row.advantage):
        raise ValueError(f"step row {index}: advantage {row.advantage} is not finite")
    return np.concatenate([prompt, action]), mask, old, sampler


def _chains(seqs: list, merge: bool) -> list[list]:
    """Group consecutive `(index, tokens, mask, old, sampler)` entries into chains: an entry
    joins the previous chain when its prompt begins with that chain's whole sequence."""
    chains: list[list] = []
    for item in seqs:
        _, tokens, mask = item[:3]
        if merge and chains:
            last = chains[-1][-1][1]
            prompt_len = tokens.size - mask.size
            if prompt_len >= last.size and np.array_equal(tokens[: last.size], last):
                chains[-1].append(item)
                continue
        chains.append([item])
    return chains


def pack(
    rows: Sequence[StepRow],
    cfg: PackingConfig | Any = None,
    *,
    row_len: int | None = None,
    packed_rows: int | None = None,
    **overrides,
) -> Packed:
    """First-fit-decreasing packing of step rows into bucketed `[rows, row_len]` micro-batches.

    Full micro-batches hold `tokens_per_micro // row_len` rows (rounded to `row_multiple`); the
    remainder goes into one smaller micro-batch whose row count is the next power-of-two
    multiple of `row_multiple`. Rows without any loss token are dropped (they add nothing to
    the numerator or the denominator). With `merge_prefixes`, rows that extend the previous
    row are packed as one chain (module docstring).

    Hosts that each pack their own rows into one global batch must agree on the shapes:
    `row_len` fixes the packed row length (at least what the rows need) and `packed_rows`
    pads the number of packed rows up to a count (empty rows: segment 0, no loss). With
    `packed_rows`, a host whose rows carry no loss token contributes padding alone.
    """
    cfg = build(PackingConfig, cfg, **overrides)
    seqs = []  # (index, tokens, mask, old, sampler)
    locations: list[Any] = [None] * len(rows)
    dropped = 0
    for i, row in enumerate(rows):
        tokens, mask, old, sampler = _row_arrays(row, i)
        if mask.sum() == 0:
            dropped += 1
            continue
        if tokens.size - 1 > cfg.max_row_len:
            raise ValueError(
                f"step row {i}: {tokens.size} tokens exceed max_row_len={cfg.max_row_len} + 1"
            )
        seqs.append((i, tokens, mask, old, sampler))
    if not seqs and not packed_rows:
        raise ValueError(f"nothing to train: all {len(rows)} step rows have no loss token")
    chains = _chains(seqs, cfg.merge_prefixes)
    length = [c[-1][1].size - 1 for c in chains]  # positions of each chain

    need = _next_bucket(max(length, default=1), cfg.min_row_len, cfg.max_row_len, cfg.row_len_steps)
    if row_len is not None and row_len < need:
        raise ValueError(f"row_len={row_len} is shorter than the {need} positions the rows need")
    row_len = need if row_len is None else int(row_len)
    # First fit decreasing: long chains first, each into the first packed row with room.
    order = sorted(range(len(chains)), key=lambda j: (-length[j], chains[j][0][0]))
    fill: list[int] = []
    members: list[list[int]] = []
    for j in order:
        for b, used in enumerate(fill):
            if used + length[j] <= row_len:
                fill[b] += length[j]
                members[b].append(j)
                break
        else:
            fill.append(length[j])
            members.append([j])

    n_packed = max(len(members), packed_rows or 0)
    mult = cfg.row_multiple
    full = max(mult, (cfg.tokens_per_micro // row_len) // mult * mult)
    sizes = [full] * (n_packed // full)
    rest = n_packed - sum(sizes)
    if rest:
        sizes.append(min(_next_bucket(rest, mult, full), full))

    micro_batches = []
    real = 0
    packed_row = 0
    for m, n_rows in enumerate(sizes):
        shape = (n_rows, row_len)
        ids, tgt, pos, seg, lids = (np.zeros(shape, np.int32) for _ in range(5))
        lmask, old_lp, adv, smp_lp = (np.zeros(shape, np.float32) for _ in range(4))
        for r in range(n_rows):
            if packed_row >= len(members):
                break  # padding rows of the last micro-batch
            start, loss_id = 0, 0
            for s, j in enumerate(members[packed_row], start=1):
                seq, n = chains[j][-1][1], length[j]
                sl = slice(start, start + n)
                ids[r, sl] = seq[:-1]
                tgt[r, sl] = seq[1:]
                pos[r, sl] = np.arange(n)
                seg[r, sl] = s
                for index, tokens, mask, old, sampler in chains[j]:
                    loss_id += 1
                    end = start + tokens.size - 1
                    first = tokens.size - mask.size - 1  # position that predicts action token 0
                    act = slice(start + first, end)
                    lmask[r, act] = mask
                    old_lp[r, act] = old * mask
                    smp_lp[r, act] = sampler * mask
                    adv[r, act] = rows[index].advantage
                    lids[r, act] = loss_id
                    locations[index] = (m, r, start, tokens.size - 1, first)
                start += n
                real += n
            packed_row += 1
        micro_batches.append(PackedBatch(ids, tgt, pos, seg, lmask, old_lp, adv, lids, smp_lp))
    return Packed(micro_batches, locations, real, dropped, len(members))


def split_minibatches(
    rows: Sequence[StepRow], num_minibatches: int, rng: np.random.Generator | None = None
) -> list[list[StepRow]]:
    """Split step rows into `num_minibatches` near-equal parts, one optimizer update each;
    `rng` shuffles which rows go together. Each part keeps the rows' original order, so the
    steps of a trajectory that land in one part still pack as a chain."""
    if num_minibatches < 1 or num_minibatches > len(rows):
        raise ValueError(f"cannot split {len(rows)} step rows into {num_minibatches} minibatches")
    order = np.arange(len(rows)) if rng is None else rng.permutation(len(rows))
    parts = np.array_split(order, num_minibatches)
    return [[rows[i] for i in np.sort(part)] for part in parts]
