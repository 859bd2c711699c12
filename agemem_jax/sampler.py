"""The jitted sampler: a batch of rows decoded together, each row at its own KV-cache offset.

One-shot batches:

    outs = generate(model, tokenizer, ["Hi!", [{"role": "user", "content": "2+2?"}]], 64,
                    temperature=1.0, top_p=0.95, stop=("</answer>",), seed=0)
    outs[0].tokens, outs[0].text, outs[0].logprobs, outs[0].finish_reason

Multi-turn sessions:

    session = SamplerSession(model, tokenizer, batch_size=8, stop=("</tool_call>", "</answer>"))
    session.start(prompts)                         # prefill every row
    outs = session.decode(256, SamplingParams(temperature=1.0))
    session.append({0: obs_ids, 3: obs_ids_3})     # ragged continuation; no prefix recompute
    outs = session.decode(256, SamplingParams(temperature=1.0))
    session.reset_row(5, edited_context_ids)       # context edited: re-prefill that row alone

Cache invariants. Row b keeps its context in slots `0 .. index[b]-1` with no holes, so a slot is
a position. Everything after that is garbage that no query can see (a query at slot s attends to
slots <= s) and that the next write replaces. A decode turn leaves each row's last sampled token
*pending*: it is not in the cache, and the next `append` to the row writes it first. That saves
the one forward pass per turn whose logits nobody would read.

Programs. There are three jitted programs: prefill (`Decoder.extend` of a right-padded chunk at
each row's offset; start, append and reset-row are all this one), decode (a `lax.while_loop` that
samples, checks stops and extends by one token per step, with the cache donated so XLA updates
it in place) and grow (copies the cache into more slots). Decoding never reserves room for
`max_new_tokens` up front: it returns when a running row fills the cache, the session grows the
cache and resumes the same turn. Attention reads every slot, so the cache stays as small as the
rows' actual contexts allow (an RL turn may allow 2048 tokens and stop after 100). Chunk lengths
and output buffers are bucketed to powers of two, cache slots to powers of two and then to
multiples of `slot_step`, so a long multi-turn run compiles a handful of programs;
`compile_count()` reports how many. Rows of a turn stop at different lengths: once at most half
the batch still runs, those rows are gathered into a batch of the next power of two, decode
there, and are written back when they stop (`compact_rows`), so stopped rows do not spin
through the tail of the turn. The programs are module-level
functions jitted on static arguments (the model's graph definition, the sampling mode), so new
sessions over the same model reuse them.

Stops. EOS ids are compared per token; stop strings are matched on the generated text by the
automaton of `agemem_jax.stop_strings`, so they fire however the tokenizer split or merged them.

Log-probs. Each sampled token gets two: under the distribution it was drawn from (temperature,
top-k, top-p applied; 0 for greedy, whose distribution is a point mass) and under the raw model
at temperature 1, which is what GRPO needs as log pi_old.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from agemem_jax import sharding as shd
from agemem_jax.models.qwen.model import Decoder, KVCache, ModelConfig
from agemem_jax.stop_strings import StopMatcher, token_bytes

Array = jax.Array

# Finish reasons, as stored on device: 0 means the row is still running.
FINISH_REASONS = {1: "eos", 2: "stop", 3: "length"}
_EOS, _STOP, _LENGTH = 1, 2, 3

# Trace counts of the jitted programs. jit traces a function when it meets new shapes or static
# arguments, which is exactly when it compiles, so this is the compile count.
_TRACES: collections.Counter[str] = collections.Counter()


def compile_count() -> int:
    """How many sampler programs this process has compiled so far."""
    return sum(_TRACES.values())


def bucket(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum)."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


def slot_bucket(n: int, minimum: int, step: int) -> int:
    """Cache slots for `n` tokens: a power of two up to `step`, then the next multiple of `step`.

    Decode reads every slot, so past a few hundred slots it is bound by the cache's memory
    traffic: doubling leaves up to half the cache empty (a 1,100-token row in 2,048 slots),
    while steps of `step` waste less than `step` slots for one compile per step.
    """
    b = bucket(n, minimum)
    return b if b <= step else -(-max(int(n), 1) // step) * step


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How a token is drawn from the model's logits. temperature 0 = greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be a non-negative int, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the policy samples its turns: the `sampling` config block.

    The default distribution is the raw model (temperature 1, no truncation): GRPO's π_old is
    the model's own log-prob, and rollouts drawn from another distribution are corrected by
    truncated importance sampling (`rl_loss`, `grpo.loss.tis_cap`). Evaluation presets set
    temperature 0 (greedy) explicitly. `max_new_tokens` is the spec's max response length.
    """

    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    max_new_tokens: int = 2048  # spec: max response length
    stop: tuple[str, ...] = ("</tool_call>", "</answer>")  # a protocol action ends the turn
    summary_max_new_tokens: int = 256  # the summarizer's and the local judge's budget (ours)
    # Sample with one module per layer even when the model scans its layers (see `unrolled`):
    # the KV cache is then updated in place. Costs a longer compile; accelerator presets set it.
    unroll_layers: bool = False
    # Once at most half a decode batch still runs its turn, the running rows go on alone in a
    # smaller batch, so finished rows stop costing compute. Rows never mix, but XLA's matmuls
    # round differently at another batch size, so a sampled token can differ where a draw sits
    # on a boundary (SmolLM2, temperature 1: benchmarks/rollout_decode.py). Off: lockstep.
    compact_rows: bool = True
    # KV-cache growth: powers of two up to this many slots, then multiples of it (decode reads
    # every slot, so a finer step reads fewer empty ones and compiles one program per step).
    cache_slot_step: int = 256

    def __post_init__(self):
        _ = self.params  # SamplingParams' checks of temperature, top_k and top_p
        if self.max_new_tokens < 1 or self.summary_max_new_tokens < 1:
            raise ValueError("max_new_tokens and summary_max_new_tokens must be >= 1")

    @property
    def params(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p)

    @property
    def samples_pi_old(self) -> bool:
        """Whether rollouts are drawn from the raw model itself (temperature 1, no top-k/p)."""
        return (self.temperature, self.top_k, self.top_p) == (1.0, 0, 1.0)


@dataclasses.dataclass
class Completion:
    """One row's output of a decode turn.

    `tokens` are the generated ids, including the EOS or the token that completed a stop string.
    `logprobs` are under the sampling distribution (0 for greedy), `model_logprobs` under the raw
    model at temperature 1 (log pi_old for GRPO). `text` decodes `tokens` without a final EOS.
    """

    tokens: list[int]
    text: str | None
    logprobs: list[float]
    model_logprobs: list[float]
    finish_reason: str  # "eos" | "stop" | "length"
    stop_sequence: str | None = None


# ---------------------------------------------------------------------------- token selection
# Sampling is inverse-CDF over blocks of the vocabulary: one uniform number per row instead of a
# Gumbel draw per vocabulary entry (which cost more than the LM head on CPU), and no sort.
_BLOCK = 256


def _largest_threshold(w: Array, ok) -> Array:
    """Per row, the largest t in [0, 1] with ok(t) true (ok: [B, 1] -> [B], true for small t
    and monotone). Bisection on the bit patterns of non-negative f32, so it is exact."""
    lo = jnp.zeros(w.shape[:1], jnp.int32)  # ok(0) holds
    hi = jnp.full(w.shape[:1], jax.lax.bitcast_convert_type(jnp.float32(1), jnp.int32) + 1)

    def step(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        good = ok(jax.lax.bitcast_convert_type(mid, jnp.float32)[:, None])
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 31, step, (lo, hi))
    return jax.lax.bitcast_convert_type(lo, jnp.float32)[:, None]


def _draw(keys: Array, weights: Array) -> Array:
    """One index per row with probability proportional to `weights` [B, V] (>= 0, one > 0)."""
    b, v = weights.shape
    n_blocks = -(-v // _BLOCK)
    w = jnp.pad(weights, ((0, 0), (0, n_blocks * _BLOCK - v))).reshape(b, n_blocks, _BLOCK)
    block_mass = w.sum(-1)
    cum = jnp.cumsum(block_mass, axis=-1)
    u = jax.vmap(jax.random.uniform)(keys)
    target = u * cum[:, -1]

    def first_above(c: Array, t: Array, mass: Array) -> Array:
        # First entry whose cumulative mass exceeds t. Rounding can push t past the end; then
        # take the last entry with mass, so a zero-probability entry is never picked.
        last = mass.shape[-1] - 1 - jnp.argmax(jnp.flip(mass > 0, -1), axis=-1)
        return jnp.minimum(jnp.sum(c <= t[:, None], axis=-1), last)

    j = first_above(cum, target, block_mass)
    inside = jnp.take_along_axis(w, j[:, None, None], axis=1)[:, 0]
    before = jnp.take_along_axis(cum - block_mass, j[:, None], axis=1)[:, 0]
    k = first_above(jnp.cumsum(inside, -1), jnp.maximum(target - before, 0.0), inside)
    return (j * _BLOCK + k).astype(jnp.int32)


def select_tokens(
    logits: Array,
    keys: Array,
    temperature: Array,
    top_p: Array,
    *,
    greedy: bool,
    top_k: int,
    use_top_p: bool,
    allowed: Array | None = None,
) -> tuple[Array, Array, Array]:
    """Draw one token per row. logits [B, V]; keys [B] (one PRNG key per row).

    Returns (tokens, log-prob under the sampling distribution, log-prob under the raw model).
    Temperature, then top-k, then top-p (the smallest set of most likely tokens whose mass
    reaches top_p), as transformers applies them; ties at a cut-off are all kept.
    `temperature` and `top_p` are scalars or one value per row; a row at temperature 0 is
    greedy. `allowed` [B, V] (a grammar's mask) removes tokens before anything else; the raw
    model's log-prob still scores the token under the unmasked model.
    """
    logits = logits.astype(jnp.float32)
    raw_lse = jax.nn.logsumexp(logits, axis=-1)
    masked = logits if allowed is None else jnp.where(allowed, logits, -jnp.inf)
    argmax = jnp.argmax(masked, axis=-1).astype(jnp.int32)
    if greedy:
        raw = jnp.take_along_axis(logits, argmax[:, None], axis=-1)[:, 0]
        return argmax, jnp.zeros_like(raw), raw - raw_lse
    rows = logits.shape[:1]
    temperature = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), rows)
    top_p = jnp.broadcast_to(jnp.asarray(top_p, jnp.float32), rows)[:, None]
    sampled = temperature > 0
    x = masked / jnp.where(sampled, temperature, 1.0)[:, None]
    x = x - jnp.max(x, axis=-1, keepdims=True)
    w = jnp.exp(x)  # unnormalized probabilities, max 1
    if top_k:
        count_ge = lambda t: jnp.sum(w >= t, axis=-1) >= top_k
        w = jnp.where(w >= _largest_threshold(w, count_ge), w, 0.0)
    if use_top_p:
        need = top_p[:, 0] * jnp.sum(w, axis=-1)
        mass_ge = lambda t: jnp.sum(jnp.where(w >= t, w, 0.0), axis=-1) >= need
        w = jnp.where(w >= _largest_threshold(w, mass_ge), w, 0.0)
    tokens = jnp.where(sampled, _draw(keys, w), argmax)
    picked = jnp.take_along_axis(x, tokens[:, None], axis=-1)[:, 0]
    raw = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    logp = jnp.where(sampled, picked - jnp.log(jnp.sum(w, axis=-1)), 0.0)
    return tokens, logp, raw - raw_lse


# ---------------------------------------------------------------------------- programs
def _constrain(x: Array, axes: tuple, layout) -> Array:
    """Pin an output's sharding so the next call sees the same input layout (no recompile)."""
    if layout is None:
        return x
    mesh, rules = layout
    return jax.lax.with_sharding_constraint(x, shd.named_sharding(axes, mesh, rules, x.shape))


def _cache_axes(cache: KVCache) -> tuple:
    axes = ("batch", "kv_heads", None, None)
    return axes if isinstance(cache.k, tuple) else (None, *axes)


def _constrain_cache(cache: KVCache, layout) -> KVCache:
    axes = _cache_axes(cache)
    return jax.tree.map(lambda a: _constrain(a, axes, layout), cache)


@functools.partial(jax.jit, static_argnames=("graphdef", "layout"), donate_argnames=("cache",))
def _prefill(graphdef, params, cache, index, last_hidden, ids, lens, reset, *, layout):
    """Write `ids[b, :lens[b]]` at each row's offset (0 for `reset` rows).

    Returns the cache, the new offsets and, for rows with a non-empty chunk, the final hidden
    state of their last token (the one whose logits the next decode samples from).
    """
    _TRACES["prefill"] += 1
    model = nnx.merge(graphdef, params)
    index = jnp.where(reset, 0, index)
    hidden, cache = model.extend(ids, cache, index)
    last = jnp.take_along_axis(hidden, jnp.maximum(lens - 1, 0)[:, None, None], axis=1)[:, 0]
    last_hidden = jnp.where((lens > 0)[:, None], last.astype(last_hidden.dtype), last_hidden)
    return (
        _constrain_cache(cache, layout),
        _constrain(index + lens, ("batch",), layout),
        _constrain(last_hidden, ("batch", None), layout),
    )


@functools.partial(jax.jit, static_argnames=("slots", "layout"))
def _grow(cache, *, slots, layout):
    _TRACES["grow"] += 1

    def pad(a: Array, axis: int) -> Array:
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, slots - a.shape[axis])
        return jnp.pad(a, widths)

    # Keys keep slots last, values second to last (see KVCache).
    k = jax.tree.map(lambda a: pad(a, -1), cache.k)
    v = jax.tree.map(lambda a: pad(a, -2), cache.v)
    return _constrain_cache(KVCache(k, v), layout)


class _Turn(NamedTuple):
    """State of one decode turn, carried through the loop and across cache growth."""

    step: Array  # tokens sampled so far = the output column written next
    index: Array  # [B] committed tokens
    last: Array  # [B] the token sampled last, not yet in the cache
    done: Array  # [B]; rows that do not take part start done
    finish: Array  # [B] a FINISH_REASONS key, 0 while running
    which: Array  # [B] index of the stop string that matched, -1 if none
    stop_state: Array  # [B] stop-string automaton state
    n_gen: Array  # [B]
    draws: Array  # [B] tokens drawn over the session's life: the per-row PRNG counter
    tokens: Array  # [B, n_out]
    logp: Array  # [B, n_out] under the sampling distribution
    model_logp: Array  # [B, n_out] under the raw model

    @classmethod
    def begin(cls, active: np.ndarray, index, draws, n_out: int, place) -> _Turn:
        b = len(active)
        zeros = np.zeros(b, np.int32)
        return cls(
            step=jnp.int32(0),
            index=index,
            last=place(zeros, ("batch",)),
            done=place(~active, ("batch",)),
            finish=place(zeros, ("batch",)),
            which=place(zeros - 1, ("batch",)),
            stop_state=place(zeros, ("batch",)),
            n_gen=place(zeros, ("batch",)),
            draws=draws,
            tokens=place(np.full((b, n_out), -1, np.int32), ("batch", None)),
            logp=place(np.zeros((b, n_out), np.float32), ("batch", None)),
            model_logp=place(np.zeros((b, n_out), np.float32), ("batch", None)),
        )


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "greedy", "top_k", "use_top_p", "layout"),
    donate_argnames=("cache", "turn"),
)
def _decode(
    graphdef,
    params,
    cache,
    turn,
    last_hidden,
    limit,
    row_keys,
    temperature,
    top_p,
    eos_ids,
    stop_table,
    allowed=None,
    shrink_at=None,
    *,
    greedy,
    top_k,
    use_top_p,
    layout,
):
    """Decode until every row has stopped, or a running row has filled the cache.

    A turn starts by sampling from the prefilled rows' logits (`last_hidden`). Each loop step
    then feeds the tokens sampled last through the model, which commits them to the cache of
    the rows still running, samples the next ones, records them and checks for EOS, stop
    strings and `limit`. Finished rows stop advancing: their forward passes write past their
    length, where nothing reads. When a running row reaches the last slot the program returns;
    the session grows the cache and calls it again with the same `turn`, so the cache (and
    the attention over it) only ever spans what the rows have actually used. `allowed` [B, V],
    when given, masks the turn's first token only (a host-side grammar steps one token a turn).
    The program also returns once no more than `shrink_at` rows still run (-1: never), so the
    session can go on with those rows alone in a smaller batch (`SamplerSession.decode`).
    """
    _TRACES["decode"] += 1
    model = nnx.merge(graphdef, params)
    q_pad = stop_table.shape[1]

    def sample_and_record(c: _Turn, logits: Array, mask=None) -> _Turn:
        keys = jax.vmap(jax.random.fold_in)(row_keys, c.draws)
        tok, lp, mlp = select_tokens(
            logits, keys, temperature, top_p, greedy=greedy, top_k=top_k, use_top_p=use_top_p,
            allowed=mask,
        )  # fmt: skip
        running = ~c.done
        tok = jnp.where(running, tok, 0)
        n_gen = c.n_gen + running
        code = stop_table[tok, c.stop_state]
        matched = code // q_pad
        reason = jnp.where(
            jnp.isin(tok, eos_ids),
            _EOS,
            jnp.where(matched > 0, _STOP, jnp.where(n_gen >= limit, _LENGTH, 0)),
        )
        ended = running & (reason > 0)
        col = lambda buf, v: jax.lax.dynamic_update_slice(buf, v[:, None], (0, c.step))
        return c._replace(
            step=c.step + 1,
            last=jnp.where(running, tok, c.last),
            done=c.done | ended,
            finish=jnp.where(ended, reason, c.finish),
            which=jnp.where(ended & (reason == _STOP), matched - 1, c.which),
            stop_state=jnp.where(running, code % q_pad, c.stop_state),
            n_gen=n_gen,
            draws=c.draws + running,
            tokens=col(c.tokens, jnp.where(running, tok, -1)),
            logp=col(c.logp, jnp.where(running, lp, 0.0)),
            model_logp=col(c.model_logp, jnp.where(running, mlp, 0.0)),
        )

    def body(carry):
        c, cache = carry
        # The tokens sampled last enter the cache of every row still running.
        hidden, cache = model.extend(c.last[:, None], cache, c.index)
        c = c._replace(index=c.index + ~c.done)
        return sample_and_record(c, model.logits(hidden[:, 0])), _constrain_cache(cache, layout)

    def more(carry):
        c, cache = carry
        room = jnp.all(c.done | (c.index < cache.slots))
        many = jnp.sum(~c.done) > (-1 if shrink_at is None else shrink_at)
        return (c.step < c.tokens.shape[1]) & ~jnp.all(c.done) & room & many

    first = lambda c: sample_and_record(c, model.logits(last_hidden), allowed)
    turn = jax.lax.cond(turn.step == 0, first, lambda c: c, turn)
    turn, cache = jax.lax.while_loop(more, body, (turn, cache))
    turn = turn._replace(index=_constrain(turn.index, ("batch",), layout))
    return _constrain_cache(cache, layout), turn


def _batch_axis(cache: KVCache) -> int:
    return 0 if isinstance(cache.k, tuple) else 1  # stacked caches lead with the layer axis


@functools.partial(jax.jit, static_argnames=("layout",))
def _take_rows(cache, turn, rows, *, layout):
    """The cache and turn state of `rows` alone: a smaller batch that decodes on its own."""
    _TRACES["compact"] += 1
    axis = _batch_axis(cache)
    cache = jax.tree.map(lambda a: jnp.take(a, rows, axis=axis), cache)
    fields = {f: jnp.take(getattr(turn, f), rows, axis=0) for f in turn._fields if f != "step"}
    return _constrain_cache(cache, layout), turn._replace(**fields)


@functools.partial(jax.jit, static_argnames=("layout",), donate_argnames=("cache", "turn"))
def _put_rows(cache, turn, sub_cache, sub_turn, rows, *, layout):
    """Write a smaller batch's cache and turn state back into rows `rows` of the full batch."""
    _TRACES["compact"] += 1
    axis = _batch_axis(cache)
    at = (slice(None),) * axis + (rows,)
    cache = jax.tree.map(lambda a, b: a.at[at].set(b), cache, sub_cache)
    fields = {
        f: getattr(turn, f).at[rows].set(getattr(sub_turn, f)) for f in turn._fields if f != "step"
    }
    return _constrain_cache(cache, layout), turn._replace(step=sub_turn.step, **fields)


# ---------------------------------------------------------------------------- session
_TOKEN_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stop_table(tokenizer, stops: tuple[str, ...], vocab_size: int) -> Array:
    """The decode loop's stop table on device, cached per tokenizer: building one walks the
    whole vocabulary, and sending it costs a copy per turn."""
    if not stops:
        return jnp.zeros((vocab_size, 1), jnp.int32)  # one state, never matching
    if tokenizer is None:
        raise ValueError("stop strings need a tokenizer (pass one, or use eos_ids only)")
    per_tok = _TOKEN_BYTES.setdefault(tokenizer, {})
    if ("bytes", vocab_size) not in per_tok:
        per_tok[("bytes", vocab_size)] = token_bytes(tokenizer, vocab_size)
    if (stops, vocab_size) not in per_tok:
        matcher = StopMatcher(stops, per_tok[("bytes", vocab_size)])
        per_tok[(stops, vocab_size)] = jnp.asarray(matcher.table)
    return per_tok[(stops, vocab_size)]


def default_eos_ids(tokenizer, model: Decoder) -> tuple[int, ...]:
    """Ids that end an assistant turn: the tokenizer's EOS, `<|im_end|>` and the config's EOS."""
    ids: set[int] = set()
    cfg_eos = model.cfg.eos_token_id
    ids.update([cfg_eos] if isinstance(cfg_eos, int) else (cfg_eos or []))
    if tokenizer is not None:
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
            ids.add(im_end)
    return tuple(sorted(ids))


def _sampling_cfg(cfg: ModelConfig) -> ModelConfig:
    """The layout `unrolled` gives: a module per layer, and no remat (sampling has no backward)."""
    return dataclasses.replace(cfg, scan_layers=False, remat_policy="none")


def unrolled(model: Decoder) -> Decoder:
    """The same weights with one module per layer (`scan_layers=False`).

    A scanned decoder keeps its KV cache stacked `[layers, ...]`; every forward slices each
    layer out and stacks the updated layers back, so a decode step's temporaries hold several
    copies of the cache (XLA's memory analysis: about 4x the cache for Qwen3-4B shapes). With a
    module per layer each layer's buffer is updated in place. The copy is made once per session.
    """
    if not model.cfg.scan_layers:
        return model
    cfg = _sampling_cfg(model.cfg)
    graphdef, target = nnx.split(nnx.eval_shape(lambda: type(model)(cfg, rngs=nnx.Rngs(0))))
    source = dict(nnx.to_flat_state(nnx.state(model)))
    flat = []
    for path, var in nnx.to_flat_state(target):
        if path[0] == "layers":  # ("layers", i, *rest) is row i of ("layers", *rest)
            value = source[("layers", *path[2:])].value[path[1]]
        else:
            value = source[path].value
        flat.append((path, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


class SamplerSession:
    """A fixed batch of rows with KV caches, decoded turn by turn.

    Args:
      model: the `Decoder`. Its weights are read again at every `start()`, so one session can
        serve a whole training run.
      tokenizer: HF tokenizer, used for string prompts, stop strings and `Completion.text`.
        May be None when prompts are ids and only `eos_ids` end rows.
      batch_size: number of rows. On a mesh it is padded up to a multiple of the batch shards.
      max_len: longest context a row may reach (prompt + all turns); default the model's
        `max_position_embeddings`.
      stop: stop strings matched on the generated text (see `agemem_jax.stop_strings`).
      eos_ids: token ids that end a row; default `default_eos_ids`.
      seed: PRNG seed. A row's draws depend only on the seed, its row index and how many tokens
        it has drawn, so a run is reproducible whatever the other rows do.
      row_offset: added to every row index in the draws. A host that runs rows i..j of a batch
        split over hosts passes i, so each row draws what it would in one unsplit batch.
      mesh, rules: with a mesh, rows are sharded over the `batch` rule and weights by `rules`.
      min_slots: smallest cache bucket.
      slot_step: the cache grows in powers of two up to this many slots, then in multiples of
        it (`slot_bucket`).
      prefill_chunk: longest chunk prefilled in one program call; longer prompts are prefilled
        in pieces, which bounds the attention scores' memory at B x heads x chunk x slots.
      unroll_layers: sample a scanned model through a per-layer copy of its weights (`unrolled`).
      compact_rows: once at most half the batch still runs in a decode turn, go on with those
        rows alone in a smaller batch (powers of two), so finished rows stop costing compute.
    """

    def __init__(
        self,
        model: Decoder,
        tokenizer=None,
        batch_size: int = 1,
        *,
        max_len: int | None = None,
        stop: Sequence[str] = (),
        eos_ids: Sequence[int] | None = None,
        seed: int = 0,
        row_offset: int = 0,
        mesh: jax.sharding.Mesh | None = None,
        rules: shd.Rules | str = "sample",
        min_slots: int = 64,
        slot_step: int = 256,
        prefill_chunk: int = 256,
        unroll_layers: bool = False,
        compact_rows: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.unroll_layers = unroll_layers
        self.cfg = _sampling_cfg(model.cfg) if unroll_layers else model.cfg
        self.max_len = int(max_len or self.cfg.max_position_embeddings)
        self.stop = (stop,) if isinstance(stop, str) else tuple(stop)
        if self.stop:
            _stop_table(tokenizer, self.stop, self.cfg.vocab_size)  # bad stops fail here, once
        self.eos_ids = tuple(default_eos_ids(tokenizer, model) if eos_ids is None else eos_ids)
        self.mesh = mesh
        self.rules = shd.rules_from(rules)
        self.layout = None if mesh is None else (mesh, self.rules)
        self.min_slots = min_slots
        if slot_step < 1:
            raise ValueError(f"slot_step must be >= 1, got {slot_step}")
        self.slot_step = slot_step
        self.prefill_chunk = bucket(prefill_chunk)
        shards = 1
        if mesh is not None:
            spec = shd.logical_spec(("batch",), self.rules)[0]
            for ax in (spec,) if isinstance(spec, str) else spec or ():
                shards *= mesh.shape[ax]
        self.num_rows = batch_size
        self.batch_size = -(-batch_size // shards) * shards
        self._batch_shards = shards
        self.compact_rows = compact_rows
        if row_offset < 0:
            raise ValueError(f"row_offset must be >= 0, got {row_offset}")
        self._graphdef, self._params = None, None
        self._cache: KVCache | None = None
        # Per-row PRNG keys (the session seed folded with the row index, or a row's own seed) and
        # counters. Counters live as long as the session, so later batches never replay the
        # random numbers of earlier ones; seeding a row restarts its counter.
        key = jax.random.key(seed)
        self._row_keys = np.array(
            jax.random.key_data(jax.vmap(lambda r: jax.random.fold_in(key, r))(
                jnp.arange(self.batch_size) + row_offset
            ))
        )  # fmt: skip
        self._draws = self._place(np.zeros(self.batch_size, np.int32), ("batch",))
        # Decode utilization: every loop step samples a token for all `batch_size` rows; only
        # the running rows' tokens are kept (finished, idle and padding rows spin along).
        self.stats = {"decode_row_steps": 0, "decode_kept_tokens": 0}
        self._reset_state()

    # ------------------------------------------------------------------ placement helpers
    def _place(self, x, axes: tuple):
        if self.mesh is None:
            return jnp.asarray(x)
        return jax.device_put(x, shd.named_sharding(axes, self.mesh, self.rules, np.shape(x)))

    def _load_weights(self):
        graphdef, params = nnx.split(unrolled(self.model) if self.unroll_layers else self.model)
        if self.mesh is not None:
            shardings = shd.state_shardings(params, self.mesh, self.rules)
            params = jax.tree.map(
                lambda v, s: v.replace(jax.device_put(v.value, s.value)),
                params,
                shardings,
                is_leaf=lambda x: isinstance(x, nnx.Variable),
            )
        self._graphdef, self._params = graphdef, params

    def _reset_state(self):
        b = self.batch_size
        self._index = self._place(np.zeros(b, np.int32), ("batch",))
        self._last_hidden = self._place(
            np.zeros((b, self.cfg.hidden_size), self.cfg.dtype), ("batch", None)
        )
        self._lengths = np.zeros(b, np.int64)  # committed tokens per row (host mirror of index)
        self._pending: list[int | None] = [None] * b
        self._ready = np.zeros(b, bool)

    def _slots_for(self, need: int) -> int:
        """The cache length that holds `need` tokens: bucketed, so few shapes compile, and never
        past max_len."""
        if need > self.max_len:
            raise ValueError(f"a row would reach {need} tokens, over max_len={self.max_len}")
        return min(slot_bucket(need, self.min_slots, self.slot_step), self.max_len)

    def _ensure_slots(self, need: int):
        if self._cache is not None:
            self._cache = self._grown(self._cache, need)
            return
        cache = KVCache.zeros(self.cfg, self.batch_size, self._slots_for(need))
        axes = _cache_axes(cache)
        self._cache = jax.tree.map(lambda a: self._place(a, axes), cache)

    # ------------------------------------------------------------------ input handling
    def encode(self, prompt) -> list[int]:
        """A prompt as ids: a str (encoded as is), chat messages (ChatML), or ids."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("string prompts need a tokenizer")
            return list(self.tokenizer.encode(prompt, add_special_tokens=False))
        prompt = list(prompt)
        if prompt and isinstance(prompt[0], Mapping):
            if self.tokenizer is None:
                raise ValueError("chat prompts need a tokenizer")
            from agemem_jax.chat import ChatFormat

            return ChatFormat(self.tokenizer).conversation(prompt)
        ids = [int(i) for i in np.asarray(prompt, np.int64).reshape(-1)]
        bad = [i for i in ids if not 0 <= i < self.cfg.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside [0, {self.cfg.vocab_size})")
        return ids

    def _row(self, row: int) -> int:
        if not 0 <= int(row) < self.num_rows:
            raise IndexError(f"row {row} is outside [0, {self.num_rows})")
        return int(row)

    # ------------------------------------------------------------------ public API
    @property
    def lengths(self) -> np.ndarray:
        """Tokens in each row's context, including a pending last token."""
        pending = np.array([p is not None for p in self._pending[: self.num_rows]])
        return self._lengths[: self.num_rows] + pending

    @property
    def ready(self) -> np.ndarray:
        """Rows that can decode now (their last operation prefilled tokens)."""
        return self._ready[: self.num_rows].copy()

    def start(self, prompts: Sequence) -> None:
        """Reset every row and prefill `prompts` (at most `batch_size`; extra rows stay empty)."""
        if len(prompts) == 0 or len(prompts) > self.num_rows:
            raise ValueError(f"start() needs 1..{self.num_rows} prompts, got {len(prompts)}")
        self._load_weights()
        chunks: list[list[int] | None] = [None] * self.batch_size
        for i, p in enumerate(prompts):
            chunks[i] = self.encode(p)
            if not chunks[i]:
                raise ValueError(f"prompt {i} is empty")
        self._reset_state()
        self._cache = None  # reallocated to fit the new prompts, however long the last run was
        self._prefill(chunks, reset=np.ones(self.batch_size, bool))

    def append(self, chunks: Mapping[int, Sequence[int]] | Sequence[Sequence[int] | None]):
        """Append token ids to some rows (tool observations, the next user message) in one call.

        `chunks` maps a row to its ids, or lists one entry per row (None = leave the row alone).
        A row's pending token from the last turn is written first; an empty chunk just commits
        it, which is how a row that hit its token limit continues.
        """
        if not isinstance(chunks, Mapping):
            if len(chunks) > self.num_rows:
                raise ValueError(f"{len(chunks)} chunks for {self.num_rows} rows")
            chunks = {i: c for i, c in enumerate(chunks) if c is not None}
        self.feed(append=chunks)

    def reset_row(self, row: int, prompt, *, seed: int | None = None) -> None:
        """Replace one row's whole context (after Filter/Summary/stage reset) and prefill it.

        With `seed`, the row draws from its own PRNG stream from now on, whatever its index.
        """
        self.feed(reset={row: prompt}, seeds=None if seed is None else {row: seed})

    def feed(
        self,
        append: Mapping[int, Sequence[int]] | None = None,
        reset: Mapping[int, Any] | None = None,
        seeds: Mapping[int, int] | None = None,
    ) -> None:
        """`append` to some rows and `reset` others (new prompts) in one prefill.

        A server admits new requests and commits the pending tokens of running ones this way
        in a single program call. `seeds` gives reset rows their own PRNG streams.
        """
        append, reset, seeds = dict(append or {}), dict(reset or {}), dict(seeds or {})
        todo: list[list[int] | None] = [None] * self.batch_size
        for row, ids in append.items():
            row = self._row(row)
            ids = self.encode(ids) if len(ids) else []
            pending = self._pending[row]
            chunk = ([pending] if pending is not None else []) + ids
            todo[row] = chunk
            if self._lengths[row] + len(chunk) == 0:
                raise ValueError(f"row {row} is empty; use start() or reset_row() first")
        resets = np.zeros(self.batch_size, bool)
        for row, prompt in reset.items():
            row = self._row(row)
            if row in append:
                raise ValueError(f"row {row} is both appended to and reset")
            todo[row] = self.encode(prompt)
            if not todo[row]:
                raise ValueError(f"reset needs a non-empty prompt (row {row})")
            resets[row] = True
        for row, seed in seeds.items():
            row = self._row(row)
            if not resets[row]:
                raise ValueError(f"only reset rows take a seed (row {row})")
            self._row_keys[row] = np.asarray(jax.random.key_data(jax.random.key(int(seed))))
        if seeds:
            draws = np.array(jax.device_get(self._draws))
            draws[[self._row(r) for r in seeds]] = 0
            self._draws = self._place(draws, ("batch",))
        for row in np.nonzero(resets)[0]:
            self._pending[row] = None
            self._lengths[row] = 0
        self._prefill(todo, reset=resets)

    def next_logits(self) -> np.ndarray:
        """Logits [rows, vocab] of the next token for every ready row (others are NaN)."""
        if self._params is None or self._graphdef is None:
            raise ValueError("nothing prefilled yet; call start() first")
        model = nnx.merge(self._graphdef, self._params)
        logits = np.array(model.logits(self._last_hidden), np.float32)[: self.num_rows]
        logits[~self._ready[: self.num_rows]] = np.nan
        return logits

    def decode(
        self,
        max_new_tokens: int | Mapping[int, int],
        sampling: SamplingParams | Mapping[int, SamplingParams] | None = None,
        *,
        rows: Sequence[int] | None = None,
        stop: Sequence[str] | None = None,
        allowed: Mapping[int, np.ndarray] | None = None,
    ) -> list[Completion | None]:
        """Generate for `rows` (default: every ready row) until each stops or hits the limit.

        Returns one entry per row: a Completion, or None for rows that did not take part.
        `stop` overrides the session's stop strings for this turn. `max_new_tokens` and
        `sampling` may be given per row (rows that share a batch may differ in temperature and
        top_p, not in top_k). `allowed` maps a row to a boolean [vocab] mask of the tokens its
        first sampled token may be (a grammar's next-token mask); other rows are unmasked.
        """
        if rows is None:
            rows = [r for r in range(self.num_rows) if self._ready[r]]
        rows = sorted({self._row(r) for r in rows})
        not_ready = [r for r in rows if not self._ready[r]]
        if not rows or not_ready:
            raise ValueError(
                f"rows {not_ready or rows} cannot decode: start(), append() or reset_row() first"
            )
        per_row = sampling if isinstance(sampling, Mapping) else {}
        row_params = [per_row.get(r, sampling if per_row == {} else None) for r in rows]
        if any(p is None for p in row_params) and per_row:
            raise ValueError(
                f"per-row sampling misses rows {[r for r in rows if r not in per_row]}"
            )
        params = [p if isinstance(p, SamplingParams) else SamplingParams() for p in row_params]
        if len({p.top_k for p in params}) > 1:
            raise ValueError("rows decoded together must share top_k")
        sampling = params[0]
        if sampling.top_k > self.cfg.vocab_size:
            raise ValueError(
                f"top_k={sampling.top_k} exceeds the vocabulary ({self.cfg.vocab_size})"
            )
        budget = np.zeros(self.batch_size, np.int64)
        for r in rows:
            n = max_new_tokens[r] if isinstance(max_new_tokens, Mapping) else max_new_tokens
            if int(n) < 1:
                raise ValueError(f"max_new_tokens must be >= 1, got {n}")
            budget[r] = int(n)
        temperature = np.ones(self.batch_size, np.float32)
        top_p = np.ones(self.batch_size, np.float32)
        for r, p in zip(rows, params, strict=True):
            temperature[r], top_p[r] = p.temperature, p.top_p
        active = np.zeros(self.batch_size, bool)
        active[rows] = True
        room = self.max_len - self._lengths
        limit = np.where(active, np.minimum(budget, room), 0).astype(np.int32)
        mask = None
        if allowed:
            mask = np.ones((self.batch_size, self.cfg.vocab_size), bool)
            for r, m in allowed.items():
                m = np.asarray(m, bool)
                if m.shape != (self.cfg.vocab_size,) or not m.any():
                    raise ValueError(
                        f"row {r}: a mask needs {self.cfg.vocab_size} entries, one set"
                    )
                mask[self._row(r)] = m
            mask = self._place(mask, ("batch", None))
        if (limit[rows] < 1).any():
            full = [r for r in rows if limit[r] < 1]
            raise ValueError(f"rows {full} are at max_len={self.max_len}; nothing to generate")
        stops = self.stop if stop is None else ((stop,) if isinstance(stop, str) else tuple(stop))
        table = _stop_table(self.tokenizer, stops, self.cfg.vocab_size)
        eos = jnp.asarray(np.asarray(self.eos_ids or (-1,), np.int32))
        turn = _Turn.begin(
            active, self._index, self._draws, bucket(int(limit.max()), 128), self._place
        )
        per_row = (limit, self._row_keys, temperature, top_p)
        static = dict(
            greedy=all(p.greedy for p in params),
            top_k=int(sampling.top_k),
            use_top_p=any(p.top_p < 1.0 for p in params),
            layout=self.layout,
        )
        turn = self._decode_loop(turn, per_row, (eos, table, mask), static, active)
        self._index, self._draws = turn.index, turn.draws
        self._lengths = np.asarray(jax.device_get(turn.index), np.int64)
        self.stats["decode_kept_tokens"] += int(jax.device_get(turn.n_gen).sum())
        host = jax.device_get(
            dict(n_gen=turn.n_gen, tokens=turn.tokens, logp=turn.logp,
                 model_logp=turn.model_logp, finish=turn.finish, which=turn.which)
        )  # fmt: skip

        results: list[Completion | None] = [None] * self.num_rows
        for r in rows:
            n = int(host["n_gen"][r])
            tokens = host["tokens"][r, :n].tolist()
            reason = FINISH_REASONS[int(host["finish"][r])]
            which = int(host["which"][r])
            self._pending[r] = tokens[-1]
            self._ready[r] = False
            results[r] = Completion(
                tokens=tokens,
                text=self._text(tokens, reason),
                logprobs=host["logp"][r, :n].tolist(),
                model_logprobs=host["model_logp"][r, :n].tolist(),
                finish_reason=reason,
                stop_sequence=stops[which] if reason == "stop" else None,
            )
        return results

    # ------------------------------------------------------------------ internals
    def _decode_loop(
        self, turn: _Turn, per_row: tuple, shared: tuple, static: dict, active: np.ndarray
    ) -> _Turn:
        """Run the decode program until every row stops; returns the full batch's turn state.

        With `compact_rows`, once at most half the batch still runs (rows that sat the turn
        out count as stopped), those rows go on alone: their cache and turn state are gathered
        into a batch of the next power of two and written back when they stop, so a turn's
        tail costs what its running rows do, not the whole batch's. Each row's numbers are its
        own in any batch (rows never mix), up to float rounding that depends on the batch size:
        a draw that sits on a boundary can pick another token (seen on SmolLM2).
        """
        rows = None  # full-batch indices of the rows in the current smaller batch
        full_cache: KVCache | None = None
        full_turn = turn
        cache = self._cache
        assert cache is not None  # decoding follows a prefill, which allocated the cache
        batch = self.batch_size
        eos, table, mask = shared
        last_hidden = self._last_hidden

        def place_rows(idx):
            """The per-row inputs (host arrays: limit, PRNG key data, temperature, top_p) of
            rows `idx`, on device."""
            limit, keys, temperature, top_p = (a if idx is None else a[idx] for a in per_row)
            return (
                self._place(limit, ("batch",)),
                jax.random.wrap_key_data(self._place(keys, ("batch", None))),
                self._place(temperature, ("batch",)),
                self._place(top_p, ("batch",)),
            )

        row_args = place_rows(None)
        lengths, running = self._lengths.copy(), active.copy()
        step_before = 0
        while True:
            # The cache grows only when a running row needs the next slot.
            need = int(lengths[running].max()) + 1
            cache = self._grown(cache, need)
            shrink = self._shrink_target(batch)
            cache, turn = _decode(
                self._graphdef, self._params, cache, turn, last_hidden, *row_args, eos, table,
                mask, None if shrink is None else jnp.int32(shrink), **static,
            )  # fmt: skip
            step, done, index = jax.device_get((turn.step, turn.done, turn.index))
            self.stats["decode_row_steps"] += (int(step) - step_before) * batch
            step_before = int(step)
            lengths, running = index.astype(np.int64), ~done
            if not running.any() or step >= turn.tokens.shape[1]:
                break
            if shrink is None or int(running.sum()) > shrink:
                continue  # the cache filled up: grow it and go on
            # Few rows still run: write this batch back, then take them alone.
            if rows is not None:
                assert full_cache is not None
                full_cache, full_turn = self._put_back(full_cache, full_turn, cache, turn, rows)
            else:
                full_cache, full_turn = cache, turn
            keep = np.nonzero(running)[0] if rows is None else rows[np.nonzero(running)[0]]
            size = max(bucket(len(keep)), self._batch_shards)
            full_done = np.asarray(jax.device_get(full_turn.done))
            filler = np.setdiff1d(np.nonzero(full_done)[0], keep)[: size - len(keep)]
            rows = np.concatenate([keep, filler]).astype(np.int32)
            idx = self._place(rows, (None,))
            cache, turn = _take_rows(full_cache, full_turn, idx, layout=self.layout)
            row_args = place_rows(rows)
            # Both serve a turn's first token only, which is behind us; they just need the shape.
            last_hidden = self._place(np.zeros((size, self.cfg.hidden_size), self.cfg.dtype),
                                      ("batch", None))  # fmt: skip
            if mask is not None:
                mask = self._place(np.ones((size, self.cfg.vocab_size), bool), ("batch", None))
            lengths, running = lengths[np.nonzero(running)[0]], np.ones(len(keep), bool)
            lengths = np.concatenate([lengths, np.zeros(len(filler), np.int64)])
            running = np.concatenate([running, np.zeros(len(filler), bool)])
            batch = size
        if rows is None:
            self._cache = cache
            return turn
        assert full_cache is not None
        self._cache, turn = self._put_back(full_cache, full_turn, cache, turn, rows)
        return turn

    def _shrink_target(self, batch: int) -> int | None:
        """Running-row count at which a batch of `batch` rows hands its rows to a smaller one:
        the largest power of two <= batch / 2 that the batch shards still divide; None when
        compaction is off or no smaller batch exists."""
        if not self.compact_rows:
            return None
        target = 1 << ((batch // 2).bit_length() - 1) if batch >= 2 else 0
        if target < self._batch_shards or target % self._batch_shards:
            return None
        return target

    def _grown(self, cache: KVCache, need: int) -> KVCache:
        """`cache` with at least `need` slots (the session's growth rule)."""
        slots = self._slots_for(need)
        return cache if cache.slots >= need else _grow(cache, slots=slots, layout=self.layout)

    def _put_back(self, full_cache, full_turn, cache, turn, rows):
        """Write a smaller batch back into the full one (grown first if the small one grew)."""
        full_cache = self._grown(full_cache, cache.slots)
        if full_cache.slots > cache.slots:
            cache = _grow(cache, slots=full_cache.slots, layout=self.layout)
        return _put_rows(
            full_cache, full_turn, cache, turn, self._place(rows, (None,)), layout=self.layout
        )

    def _text(self, tokens: list[int], reason: str) -> str | None:
        if self.tokenizer is None:
            return None
        if reason == "eos":
            tokens = tokens[:-1]
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    def _prefill(self, chunks: list[list[int] | None], reset: np.ndarray):
        lens = np.array([len(c) if c is not None else 0 for c in chunks], np.int64)
        base = np.where(reset, 0, self._lengths)
        if lens.max() == 0:
            return
        self._ensure_slots(int((base + lens).max()))
        if self._params is None:
            self._load_weights()
        step = self.prefill_chunk
        for start in range(0, int(lens.max()), step):
            piece = np.clip(lens - start, 0, step)
            # A chunk of one token per row (a server committing pending tokens, a grammar's
            # single step) gets its own narrow program instead of 32 columns of padding.
            width = 1 if piece.max() == 1 else bucket(int(piece.max()), 32)
            ids = np.zeros((self.batch_size, width), np.int32)
            for r, c in enumerate(chunks):
                if piece[r] and c is not None:
                    ids[r, : piece[r]] = c[start : start + piece[r]]
            self._cache, self._index, self._last_hidden = _prefill(
                self._graphdef,
                self._params,
                self._cache,
                self._index,
                self._last_hidden,
                self._place(ids, ("batch", None)),
                self._place(piece.astype(np.int32), ("batch",)),
                self._place(reset & (start == 0), ("batch",)),
                layout=self.layout,
            )
        self._lengths = base + lens
        for r in np.nonzero(lens)[0]:
            self._pending[r] = None
            self._ready[r] = True

    @property
    def utilization(self) -> float:
        """Share of decode row-steps that produced a kept token, over the session's life."""
        return self.stats["decode_kept_tokens"] / max(self.stats["decode_row_steps"], 1)

    def describe(self) -> dict[str, Any]:
        """Shapes in use, for logs."""
        return dict(
            batch_size=self.batch_size,
            slots=None if self._cache is None else self._cache.slots,
            lengths=self.lengths.tolist(),
            compiles=compile_count(),
        )


def generate(
    model: Decoder,
    tokenizer,
    prompts: Sequence,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    seed: int = 0,
    *,
    eos_ids: Sequence[int] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: shd.Rules | str = "sample",
    **session_kwargs,
) -> list[Completion]:
    """Complete every prompt (a str, ChatML messages, or token ids) in one batch.

    temperature 0 is greedy. Rows end at an EOS id (`eos_ids`, default the tokenizer's EOS and
    `<|im_end|>`), at a stop string, or after `max_new_tokens`.
    """
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError("prompts must be a non-empty list of prompts")
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    session = SamplerSession(
        model,
        tokenizer,
        batch_size=len(prompts),
        stop=stop,
        eos_ids=eos_ids,
        seed=seed,
        mesh=mesh,
        rules=rules,
        **session_kwargs,
    )
    session.start(prompts)
    # Every row was started, so every row decodes and none of the entries is None.
    return [c for c in session.decode(max_new_tokens, sampling) if c is not None]
