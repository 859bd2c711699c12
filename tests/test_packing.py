"""Packing step rows: every token lands where the loss expects it, shapes stay bucketed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agemem_jax.packing import PackingConfig, StepRow, pack, split_minibatches


def random_rows(rng, n, max_prompt=60, max_action=20, masked_frac=0.2):
    rows = []
    for _ in range(n):
        p, a = int(rng.integers(1, max_prompt)), int(rng.integers(1, max_action))
        rows.append(
            StepRow(
                prompt_ids=rng.integers(0, 1000, p).tolist(),
                action_ids=rng.integers(0, 1000, a).tolist(),
                old_logprobs=(-rng.random(a) * 5).tolist(),
                advantage=float(rng.normal()),
                action_mask=(rng.random(a) >= masked_frac).tolist(),
            )
        )
    return rows


def check_layout(rows, packed, cfg):
    """Reconstruct every step row from the packed arrays and check each field."""
    seen, segs = set(), {}
    for row, loc in zip(rows, packed.locations, strict=True):
        mask = np.asarray(row.action_mask, np.float32)
        if mask.sum() == 0:
            assert loc is None
            continue
        m, r, start, n, first = loc
        assert (m, r, start) not in seen
        seen.add((m, r, start))
        mb = packed.micro_batches[m]
        tokens = np.asarray([*row.prompt_ids, *row.action_ids])
        sl = slice(start, start + n)
        assert n == len(tokens) - 1 and first == len(row.prompt_ids) - 1
        np.testing.assert_array_equal(mb.input_ids[r, sl], tokens[:-1])
        np.testing.assert_array_equal(mb.targets[r, sl], tokens[1:])
        np.testing.assert_array_equal(mb.positions[r, sl], np.arange(n))  # reset per step row
        seg = mb.segment_ids[r, sl]
        assert seg[0] > 0 and np.all(seg == seg[0])
        assert seg[0] not in segs.setdefault((m, r), set())  # no two step rows share a segment
        segs[(m, r)].add(seg[0])
        # Only policy tokens carry loss: nothing on the prompt, the action's own mask after.
        np.testing.assert_array_equal(mb.loss_mask[r, sl][:first], 0)
        np.testing.assert_array_equal(mb.loss_mask[r, sl][first:], mask)
        np.testing.assert_allclose(
            mb.old_logp[r, sl][first:], np.asarray(row.old_logprobs, np.float32) * mask
        )
        np.testing.assert_array_equal(mb.advantages[r, sl][first:], np.float32(row.advantage))
        lid = mb.loss_ids[r, sl][first:]
        assert lid[0] > 0 and np.all(lid == lid[0])  # one loss id per step row
    for mb in packed.micro_batches:
        rows_, length = mb.shape
        assert rows_ % cfg.row_multiple == 0
        assert length in _buckets(cfg)
        # Padding is token 0 with segment 0 and carries no loss.
        assert np.all(mb.loss_mask[mb.segment_ids == 0] == 0)
        assert np.all(mb.input_ids[mb.segment_ids == 0] == 0)
    n_masked = sum(float(np.sum(r.action_mask)) for r in rows)
    assert packed.loss_tokens == n_masked
    real = sum(len(r.prompt_ids) + len(r.action_ids) - 1 for r in rows if any(r.action_mask))
    assert packed.real_tokens == real
    assert packed.padding_waste == pytest.approx(1 - real / packed.padded_tokens)


def _buckets(cfg: PackingConfig) -> set[int]:
    """Every row length packing may choose: min_row_len * 2**k * (1 + i / row_len_steps)."""
    out, size = set(), cfg.min_row_len
    while size <= cfg.max_row_len:
        out |= {size + size * i // cfg.row_len_steps for i in range(cfg.row_len_steps)}
        size *= 2
    return {b for b in out if b <= cfg.max_row_len}


@pytest.mark.parametrize(
    ("steps", "lengths"),
    [(1, [128, 256, 256, 512, 512, 1024]), (2, [128, 192, 256, 384, 512, 768])],
)
def test_row_len_buckets_per_doubling(steps, lengths):
    # Rows needing 100, 150, 200, 300, 500 and 700 positions (a row of n tokens needs n - 1).
    got = []
    for n in (100, 150, 200, 300, 500, 700):
        row = StepRow(prompt_ids=list(range(1, n)), action_ids=[7, 8], old_logprobs=[0.0, 0.0])
        got.append(pack([row], min_row_len=128, row_len_steps=steps).shapes[0][1])
    assert got == lengths
    # The midpoints pad less: a 152-position row (GRPO's 24-token prompt + 128 tokens) costs
    # 192 positions instead of 256.
    row = StepRow(prompt_ids=list(range(1, 26)), action_ids=list(range(128)),
                  old_logprobs=[0.0] * 128)  # fmt: skip
    assert pack([row] * 8, tokens_per_micro=2048, row_len_steps=2).shapes == [(8, 192)]
    assert pack([row] * 8, tokens_per_micro=2048, row_len_steps=1).shapes == [(8, 256)]
    with pytest.raises(ValueError, match="row_len_steps=3 must divide min_row_len=128"):
        PackingConfig(row_len_steps=3)


def test_pack_layout_and_bucketed_shapes():
    rng = np.random.default_rng(0)
    rows = random_rows(rng, 60)
    rows[3].action_mask = [False] * len(rows[3].action_ids)  # no loss token: dropped
    cfg = PackingConfig(tokens_per_micro=512, min_row_len=32, row_multiple=2)
    packed = pack(rows, cfg)
    check_layout(rows, packed, cfg)
    assert packed.dropped == sum(not any(r.action_mask) for r in rows) >= 1
    assert len(set(packed.shapes)) <= 2  # full micro-batches plus one smaller remainder
    full = packed.shapes[0]
    assert full[0] * full[1] <= cfg.tokens_per_micro
    assert packed.padding_waste < 0.25, packed.padding_waste  # short rows share packed rows


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    seed=st.integers(0, 10_000),
    mult=st.sampled_from([1, 2, 4, 8]),
    budget=st.sampled_from([64, 256, 1000]),
)
def test_pack_invariants_hold_for_any_mix(n, seed, mult, budget):
    rng = np.random.default_rng(seed)
    rows = random_rows(rng, n, masked_frac=0.0)
    cfg = PackingConfig(tokens_per_micro=budget, min_row_len=16, row_multiple=mult)
    packed = pack(rows, cfg)
    check_layout(rows, packed, cfg)
    # Values placed per position come back per step row, aligned with its actions.
    back = packed.action_values([mb.old_logp for mb in packed.micro_batches])
    for row, vals in zip(rows, back, strict=True):
        np.testing.assert_allclose(vals, np.asarray(row.old_logprobs, np.float32))


def trajectory_rows(rng, n_steps, start=0):
    """Step rows of one trajectory whose context only grows: prompt_{t+1} = prompt_t +
    action_t + observation_t, as between two context edits."""
    context = rng.integers(1, 1000, 7).tolist()
    rows = []
    for t in range(n_steps):
        a = int(rng.integers(1, 6))
        rows.append(
            StepRow(
                prompt_ids=list(context),
                action_ids=rng.integers(1, 1000, a).tolist(),
                old_logprobs=(-rng.random(a) - 0.1 * (start + t)).tolist(),
                advantage=float(start + t),
                action_mask=(rng.random(a) > 0.2).tolist(),
            )
        )
        context += rows[-1].action_ids + rng.integers(1, 1000, int(rng.integers(0, 4))).tolist()
    return rows


def test_prefix_sharing_rows_pack_as_one_chain():
    rng = np.random.default_rng(4)
    rows = trajectory_rows(rng, 5) + trajectory_rows(rng, 3, start=5)
    # A context edit: the next row no longer extends the previous one, so a new chain starts.
    rows.append(StepRow([*rows[-1].prompt_ids[:4], 999], [5, 6], [-1.0, -2.0], 9.0, [1, 1]))
    rows[2].action_mask = [False] * len(rows[2].action_ids)  # dropped: the chain goes on
    merged = pack(rows, min_row_len=16)
    alone = pack(rows, min_row_len=16, merge_prefixes=False)
    live = [r for r in rows if any(r.action_mask)]
    assert alone.real_tokens == sum(len(r.prompt_ids) + len(r.action_ids) - 1 for r in live)
    # Three chains, each costing its longest row.
    chain_ends = [rows[4], rows[7], rows[8]]
    assert merged.real_tokens == sum(len(r.prompt_ids) + len(r.action_ids) - 1 for r in chain_ends)
    assert merged.loss_tokens == alone.loss_tokens
    starts = {loc[:3] for loc in merged.locations if loc is not None}
    assert len(starts) == 3
    for name in ("old_logp", "advantages", "loss_mask"):
        got = merged.action_values([getattr(mb, name) for mb in merged.micro_batches])
        want = alone.action_values([getattr(mb, name) for mb in alone.micro_batches])
        for g, w in zip(got, want, strict=True):
            assert (g is None) == (w is None)
            if g is not None:
                np.testing.assert_array_equal(g, w)
    # Every step row keeps its own loss id, and the chain's tokens are its last row's.
    for row, loc in zip(rows, merged.locations, strict=True):
        if loc is None:
            continue
        m, r, start, n, _first = loc
        mb = merged.micro_batches[m]
        tokens = [*row.prompt_ids, *row.action_ids]
        np.testing.assert_array_equal(mb.input_ids[r, start : start + n], tokens[:-1])
        np.testing.assert_array_equal(mb.positions[r, start : start + n], np.arange(n))
    # Loss ids are numbered within a packed row: no two step rows share (micro, row, id).
    ids = [
        (loc[0], loc[1], merged.micro_batches[loc[0]].loss_ids[loc[1], loc[2] + loc[4]])
        for loc in merged.locations
        if loc is not None
    ]
    assert len(set(ids)) == len(ids) and all(i[2] > 0 for i in ids)


def test_row_length_bucket_follows_longest_row():
    rows = [StepRow([1] * 200, [2, 3], [-1.0, -1.0], 1.0), StepRow([1] * 5, [2], [-1.0], 1.0)]
    packed = pack(rows, min_row_len=128)
    # One packed row (the short step row shares it), so the micro-batch is 1 x 256, not the
    # full 16 x 256 that the default 4096 tokens per micro-batch would allow.
    assert packed.shapes == [(1, 256)]
    assert {loc[1] for loc in packed.locations} == {0}


def test_pack_errors_are_clear():
    ok = StepRow([1, 2], [3], [-1.0], 1.0)
    with pytest.raises(ValueError, match="empty prompt"):
        pack([StepRow([], [3], [-1.0], 1.0)])
    with pytest.raises(ValueError, match="old log-probs"):
        pack([StepRow([1], [3, 4], [-1.0], 1.0)])
    with pytest.raises(ValueError, match="action_mask"):
        pack([StepRow([1], [3, 4], [-1.0, -1.0], 1.0, action_mask=[1])])
    with pytest.raises(ValueError, match="max_row_len"):
        pack([ok, StepRow([1] * 300, [3], [-1.0], 1.0)], max_row_len=256, min_row_len=128)
    with pytest.raises(ValueError, match="no loss token"):
        pack([StepRow([1], [3], [-1.0], 1.0, action_mask=[0])])
    with pytest.raises(ValueError, match="not finite"):
        pack([StepRow([1], [3], [-1.0], float("nan"))])
    with pytest.raises(ValueError, match="unknown setting"):
        pack([ok], {"tokens_per_batch": 4})


def test_split_minibatches_partitions_rows():
    rows = random_rows(np.random.default_rng(1), 10)
    parts = split_minibatches(rows, 3, np.random.default_rng(0))
    assert [len(p) for p in parts] == [4, 3, 3]
    assert sorted(id(r) for p in parts for r in p) == sorted(id(r) for r in rows)
    position = {id(r): i for i, r in enumerate(rows)}
    for part in parts:  # shuffled membership, original order within a part (chains survive)
        assert [position[id(r)] for r in part] == sorted(position[id(r)] for r in part)
    assert sorted(position[id(r)] for r in parts[0]) != [0, 1, 2, 3]
    assert split_minibatches(rows, 1, np.random.default_rng(0))[0] == rows
    with pytest.raises(ValueError, match="cannot split"):
        split_minibatches(rows, 11)


def test_sampler_logprobs_pack_beside_old_ones():
    """μ's log-probs land where π_old's do; without them (default sampling) they equal π_old's,
    which makes the importance weight exactly 1."""
    default = StepRow([1, 2, 3], [4, 5], [-1.0, -2.0], 1.0)
    tempered = StepRow([7, 8], [9, 10, 11], [-1.0, -2.0, -3.0], -1.0, [1, 0, 1], [-0.5, -9.0, -4.0])
    packed = pack([default, tempered], merge_prefixes=False, min_row_len=8)
    (mb,) = packed.micro_batches
    np.testing.assert_array_equal(mb.sampler_logp * (mb.loss_ids == 0), 0.0)
    old = packed.action_values([mb.old_logp])
    smp = packed.action_values([mb.sampler_logp])
    np.testing.assert_array_equal(smp[0], old[0])
    np.testing.assert_array_equal(smp[1], [-0.5, 0.0, -4.0])  # masked token: 0, like old_logp
    with pytest.raises(ValueError, match="2 sampler log-probs for 3"):
        pack([StepRow([1], [2, 3, 4], [-1.0] * 3, 1.0, sampler_logprobs=[-1.0, -1.0])])
    with pytest.raises(ValueError, match="without old log-probs"):
        pack([StepRow([1], [2], None, 1.0, sampler_logprobs=[-1.0])])
    with pytest.raises(ValueError, match="non-finite sampler"):
        pack([StepRow([1], [2], [-1.0], 1.0, sampler_logprobs=[float("-inf")])])
