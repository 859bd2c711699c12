"""LoRA adapters: a fresh adapter is the base, only adapters train, the reference is the base
with adapters off, export merges them into weights transformers loads, Orbax resumes them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import save_tiny_hf
from flax import nnx
from jax.sharding import PartitionSpec

from agemem_jax import sharding as shd
from agemem_jax.checkpointing import Checkpointer
from agemem_jax.models import load, load_checkpoint, save_checkpoint
from agemem_jax.packing import StepRow, pack
from agemem_jax.train_step import Trainer

RANK = 4
ADAM = dict(learning_rate=1e-2, warmup_steps=0, schedule="constant")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2")
    save_tiny_hf("qwen2", path)  # q/k/v biases, untied head: every mapping is exercised
    return path


def rows(vocab: int, n: int = 6, seed: int = 0) -> list[StepRow]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p, a = int(rng.integers(4, 30)), int(rng.integers(2, 10))
        out.append(
            StepRow(
                rng.integers(4, vocab, p).tolist(),
                rng.integers(4, vocab, a).tolist(),
                (-4.0 + 0.2 * rng.standard_normal(a)).tolist(),
                float(rng.standard_normal()),
            )
        )
    return out


def ids_batch(vocab: int) -> np.ndarray:
    return np.random.default_rng(3).integers(4, vocab, (2, 11))


def lora_trainer(path, scan: bool = False, kl_beta: float = 0.1) -> Trainer:
    model, _ = load_checkpoint(path, lora_rank=RANK, lora_alpha=8.0, scan_layers=scan)
    return Trainer(model, loss=dict(kl_beta=kl_beta), optim=ADAM, packing=dict(min_row_len=64))


def test_fresh_adapters_change_nothing_and_cover_every_projection(tiny_dir):
    base, _ = load_checkpoint(tiny_dir)
    adapted, _ = load_checkpoint(tiny_dir, lora_rank=RANK)
    ids = jnp.asarray(ids_batch(base.cfg.vocab_size))
    np.testing.assert_array_equal(np.asarray(base(ids)), np.asarray(adapted(ids)))
    names = {str(p[-1]) for p, _ in nnx.to_flat_state(nnx.state(adapted, nnx.LoRAParam))}
    want = {f"{t}_lora_{ab}" for t in adapted.cfg.lora_targets for ab in "ab"}
    assert names == want and len(want) == 14
    # Targets are a config value: MLP-only adapters leave attention alone.
    mlp_only, _ = load_checkpoint(tiny_dir, lora_rank=RANK, lora_targets=("up_proj",))
    assert len(jax.tree.leaves(nnx.state(mlp_only, nnx.LoRAParam))) == 2 * 2  # 2 layers x A, B


def test_only_adapters_train_and_the_reference_is_the_base(tiny_dir):
    trainer = lora_trainer(tiny_dir)
    frozen0 = jax.tree.map(np.asarray, trainer.frozen)
    adapters0 = jax.tree.map(np.asarray, trainer.params)
    n_adapter = sum(a.size for a in jax.tree.leaves(trainer.params))
    n_base = sum(a.size for a in jax.tree.leaves(trainer.frozen))
    assert trainer.ref_params is None  # no second copy of the weights
    # AdamW moments for the adapters only (plus scalar counts).
    opt = [a for a in jax.tree.leaves(trainer.opt_state) if np.ndim(a)]
    assert sum(a.size for a in opt) == 2 * n_adapter < n_base

    batch = rows(trainer.model.cfg.vocab_size)
    for _ in range(3):
        metrics = trainer.step(batch)
    assert np.isfinite(metrics["loss"]) and metrics["kl"] > 0
    for a, b in zip(jax.tree.leaves(frozen0), jax.tree.leaves(trainer.frozen), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    moved = [
        np.abs(np.asarray(b) - a).max()
        for a, b in zip(jax.tree.leaves(adapters0), jax.tree.leaves(trainer.params), strict=True)
    ]
    assert min(moved) > 0  # every A and B moved (B leaves zero after the first update)

    # Reference = the base checkpoint, exactly; the current policy has moved away from it.
    packed = pack(batch, trainer.packing_cfg)
    base, _ = load_checkpoint(tiny_dir)
    plain = Trainer(base, loss=dict(kl_beta=0.1), packing=dict(min_row_len=64))
    ref = trainer.logprobs(packed, reference=True)
    np.testing.assert_allclose(ref[0], plain.logprobs(packed)[0], atol=1e-6, rtol=0)
    now = trainer.logprobs(packed)[0]
    assert np.abs(now - ref[0]).max() > 1e-3


@pytest.mark.parametrize("scan", [False, True])
def test_export_merges_adapters_into_weights_transformers_loads(tiny_dir, tmp_path, scan):
    from transformers import AutoModelForCausalLM

    trainer = lora_trainer(tiny_dir, scan=scan)
    trainer.step(rows(trainer.model.cfg.vocab_size))
    model = trainer.model
    out = save_checkpoint(model, None, tmp_path / "export")
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = ids_batch(model.cfg.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
    ours = np.asarray(model(jnp.asarray(ids)))
    np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=0)
    # The folder holds plain weights: it loads back without adapters.
    back, _ = load_checkpoint(out, scan_layers=scan)
    assert not jax.tree.leaves(nnx.state(back, nnx.LoRAParam))
    np.testing.assert_allclose(np.asarray(back(jnp.asarray(ids))), ours, atol=2e-5, rtol=0)


def test_orbax_saves_and_resumes_adapters_exactly(tiny_dir, tmp_path):
    batch = rows(64)
    a = lora_trainer(tiny_dir)
    a.step(batch)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, a.params, a.opt_state, {"step": 1, "num_updates": a.num_updates}, force=True)
    ckpt.close()
    b = lora_trainer(tiny_dir)  # fresh adapters, fresh optimizer
    ckpt = Checkpointer(tmp_path)
    b.params, b.opt_state, loop = ckpt.restore(1, b.params, b.opt_state)
    ckpt.close()
    b.num_updates = loop["num_updates"]
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    a.step(batch)
    b.step(batch)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_adapters_follow_the_logical_axis_rules(tiny_dir):
    model, _ = load(dict(random="tiny", tokenizer=str(tiny_dir), lora_rank=RANK), seed=0)
    mesh = shd.make_mesh((1, -1, 1))
    flat = dict(nnx.to_flat_state(shd.state_shardings(nnx.state(model), mesh, shd.TRAIN_RULES)))
    q_a = flat[("layers", 0, "attn", "q_proj_lora_a")].value.spec
    q_b = flat[("layers", 0, "attn", "q_proj_lora_b")].value.spec
    down_b = flat[("layers", 0, "mlp", "down_proj_lora_b")].value.spec
    assert q_a == PartitionSpec("fsdp", None)  # input dim like q_proj's, rank replicated
    assert q_b == PartitionSpec(None, "tensor", None)  # heads like q_proj's
    assert down_b == PartitionSpec(None, "fsdp")


def test_bad_lora_settings_are_one_clear_error(tiny_dir):
    with pytest.raises(ValueError, match="lora_targets"):
        load(dict(checkpoint=str(tiny_dir), lora_rank=4, lora_targets=("qkv",)))
    with pytest.raises(ValueError, match="lora_rank"):
        load(dict(checkpoint=str(tiny_dir), lora_rank=-1))
