"""The decoder against transformers: tiny random checkpoints of each family, export, bad input."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import save_tiny_hf
from flax import nnx

from agemem_jax.models import CheckpointError, load_checkpoint, save_checkpoint
from agemem_jax.models.qwen.model import Decoder, KVCache, ModelConfig

FAMILIES = ["qwen2", "qwen3", "llama"]


def left_padded_batch(vocab: int, seed: int = 0):
    """Three rows of different lengths, left-padded, as generation batches are."""
    rng = np.random.default_rng(seed)
    lengths = [12, 7, 3]
    t = max(lengths)
    ids = np.full((len(lengths), t), 1, np.int64)
    mask = np.zeros((len(lengths), t), np.int64)
    for i, n in enumerate(lengths):
        ids[i, t - n :] = rng.integers(4, vocab, n)
        mask[i, t - n :] = 1
    return ids, mask


def hf_logits(model, ids, mask):
    """transformers' logits with positions that skip the padding (what generate() uses)."""
    pos = np.clip(np.cumsum(mask, -1) - 1, 0, None)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(pos),
        )
    return out.logits.numpy()


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = save_tiny_hf(request.param, path)
    return request.param, path, hf


def test_parity_left_padding(tiny):
    family, path, hf = tiny
    model, tokenizer = load_checkpoint(path)
    assert tokenizer is not None and len(tokenizer) == model.cfg.vocab_size
    ids, mask = left_padded_batch(model.cfg.vocab_size)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    ref = hf_logits(hf, ids, mask)
    valid = mask.astype(bool)
    err = np.abs(ours - ref)[valid].max()
    assert err <= 2e-4, f"{family}: max abs diff {err}"


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scan_layers_matches_loop(tiny, remat):
    _, path, _ = tiny
    loop, _ = load_checkpoint(path)
    scan, _ = load_checkpoint(path, scan_layers=True, remat_policy=remat)
    ids, mask = left_padded_batch(loop.cfg.vocab_size, seed=1)
    a = np.asarray(loop(jnp.asarray(ids), jnp.asarray(mask)))
    b = np.asarray(scan(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_export_round_trip(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    family, path, _ = tiny
    model, tokenizer = load_checkpoint(path, scan_layers=family == "qwen3")
    out = save_checkpoint(model, tokenizer, tmp_path / "export")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask = left_padded_batch(model.cfg.vocab_size, seed=2)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    ref = hf_logits(reloaded, ids, mask)
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 2e-4
    # And back into JAX: bit-identical parameters.
    again, _ = load_checkpoint(out, scan_layers=family == "qwen3")
    for (p, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(again)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value), err_msg=str(p))


def test_extend_matches_full_forward(tiny):
    """Prefill plus ragged appends through the KV cache equal one full forward, row by row."""
    _, path, _ = tiny
    model, _ = load_checkpoint(path)
    rng = np.random.default_rng(3)
    seqs = [rng.integers(4, model.cfg.vocab_size, n) for n in (9, 5, 7)]
    cache = KVCache.zeros(model.cfg, batch=3, slots=32)
    index = jnp.zeros(3, jnp.int32)
    cuts = [(4, 9), (2, 5), (7, 7)]  # row 2 appends nothing in the second chunk
    got = [[] for _ in seqs]
    for part in (0, 1):
        chunks = [
            s[: c[0]] if part == 0 else s[c[0] : c[1]] for s, c in zip(seqs, cuts, strict=True)
        ]
        t = max(len(c) for c in chunks)
        ids = np.zeros((3, t), np.int32)
        for i, c in enumerate(chunks):
            ids[i, : len(c)] = c
        h, cache = model.extend(jnp.asarray(ids), cache, index)
        logits = np.asarray(model.logits(h))
        for i, c in enumerate(chunks):
            got[i].append(logits[i, : len(c)])
        index = index + jnp.asarray([len(c) for c in chunks])
    for i, s in enumerate(seqs):
        full = np.asarray(model(jnp.asarray(s[None])))[0]
        np.testing.assert_allclose(np.concatenate(got[i]), full, atol=1e-4, rtol=0)


def test_segment_ids_isolate_packed_sequences():
    cfg = ModelConfig.tiny(vocab_size=64)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    a, b = np.arange(5, 10), np.arange(20, 26)
    packed = jnp.asarray(np.concatenate([a, b])[None])
    seg = jnp.asarray([[1] * 5 + [2] * 6])
    pos = jnp.asarray([list(range(5)) + list(range(6))])
    out = np.asarray(model(packed, positions=pos, segment_ids=seg))[0]
    np.testing.assert_allclose(out[:5], np.asarray(model(jnp.asarray(a[None])))[0], atol=1e-5)
    np.testing.assert_allclose(out[5:], np.asarray(model(jnp.asarray(b[None])))[0], atol=1e-5)


# ------------------------------------------------------------------ bad input
def test_missing_path_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope")


def test_unknown_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(CheckpointError, match="unknown architecture 'GPT2LMHeadModel'"):
        load_checkpoint(tmp_path)


def test_missing_and_misshapen_tensors(tmp_path):
    from agemem_jax.models.safetensors_io import CheckpointReader, save_file

    save_tiny_hf("llama", tmp_path)
    reader = CheckpointReader(tmp_path)
    tensors = {k: np.array(reader.get(k)) for k in reader.keys()}
    gone = "model.layers.1.mlp.up_proj.weight"
    save_file({k: v for k, v in tensors.items() if k != gone}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"up_proj\.weight.*missing"):
        load_checkpoint(tmp_path)
    bad = dict(tensors)
    bad[gone] = bad[gone][:, :-1]
    save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.layers\.1\.mlp"):
        load_checkpoint(tmp_path)


def test_truncated_safetensors(tmp_path):
    save_tiny_hf("qwen2", tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path)
    f.write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(tmp_path)
