"""The sharded GRPO (and SFT) update on packed step rows.

One optimizer update = one minibatch of step rows, packed into a few fixed-shape micro-batches.
For each micro-batch a jitted program computes the gradient of the loss *numerator* and adds
it, with the denominator and the metric sums, into a donated accumulator; a second jitted
program divides by the total denominator and applies AdamW. Both have explicit in/out shardings
from the logical rule table, so the same code runs on 1 CPU device or a ('data','fsdp','tensor')
mesh of any size.

Per-token log-probs come from the decoder's hidden states and `Decoder.logits` applied chunk by
chunk along the sequence under `jax.checkpoint`: only one `[rows, chunk, vocab]` block of f32
logits is alive at a time, forward or backward (Qwen's vocabulary is 151,936).

    trainer = Trainer(model, loss=cfg.loss, optim=cfg.optim, packing=cfg.packing, mesh=mesh)
    metrics = trainer.step(step_rows)        # GRPO: epochs x minibatches of updates
    metrics = trainer.sft_step(step_rows)    # cold-start cross-entropy, same packed path
    policy = trainer.model                   # current params as a Decoder, for the sampler

Updates donate the parameter buffers: take `trainer.model` afresh after each update.

Several processes (hosts). Every process calls `step` with its own step rows (its share of
the rollouts). Each packs them locally into micro-batches whose shapes all hosts agree on (two
tiny all-gathers: the row length, then the packed-row count, padding with empty rows), and
these local blocks become one global array (`jax.make_array_from_process_local_data`): host
p's rows are the p-th block of the batch axis, which is where its devices sit on the mesh. The
update itself is the one sharded program, so the loss is Σ numerators / Σ denominators over
every host's rows, exactly as if one process had packed them all. `host_model()` gathers the
parameters onto each host's own devices for its rollouts.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from agemem_jax import rl_loss
from agemem_jax import sharding as shd
from agemem_jax.dataclass_config import build
from agemem_jax.distributed import allgather_ints
from agemem_jax.models.qwen.model import Decoder
from agemem_jax.optim import OptimConfig, make_optimizer
from agemem_jax.packing import Packed, PackedBatch, PackingConfig, StepRow, pack, split_minibatches

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
    """How a rollout batch becomes optimizer updates: the `trainer` config block."""

    epochs: int = 1  # optimizer passes over each rollout batch
    num_minibatches: int = 1  # optimizer updates per epoch
    logprob_chunk: int = 256  # sequence positions per block of logits
    shuffle_seed: int = 0  # minibatch split; derived per update so resuming is exact
    sft_aggregation: str = "token_mean"  # loss aggregation of the cold-start SFT

    def __post_init__(self):
        if self.epochs < 1 or self.num_minibatches < 1 or self.logprob_chunk < 1:
            raise ValueError(f"epochs, num_minibatches and logprob_chunk must be >= 1: {self}")
        if self.sft_aggregation not in rl_loss.AGGREGATIONS:
            raise ValueError(f"sft_aggregation must be one of {rl_loss.AGGREGATIONS}")


# ------------------------------------------------------------------ log-probs
def chunked_logprobs(
    model: Decoder, hidden: Array, targets: Array, chunk: int
) -> tuple[Array, Array]:
    """log π(targets) and the entropy of π at every position, `[B, T]` each, in f32.

    The sequence is cut into blocks of `gcd(T, chunk)` positions; each block's logits are
    recomputed in the backward pass instead of stored, so peak memory is one block.
    """
    b, t, h = hidden.shape
    c = math.gcd(t, chunk)
    hs = hidden.reshape(b, t // c, c, h).swapaxes(0, 1)
    ts = targets.reshape(b, t // c, c).swapaxes(0, 1)

    @jax.checkpoint
    def block(args):
        h_blk, t_blk = args
        logits = model.logits(h_blk).astype(jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, t_blk[..., None], axis=-1)[..., 0]
        probs = jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))
        entropy = jax.lax.stop_gradient(lse - jnp.sum(probs * logits, axis=-1))
        return picked - lse, entropy

    logp, entropy = jax.lax.map(block, (hs, ts))
    return logp.swapaxes(0, 1).reshape(b, t), entropy.swapaxes(0, 1).reshape(b, t)


def packed_logprobs(model: Decoder, batch: PackedBatch, chunk: int) -> tuple[Array, Array]:
    """Per-position log-probs of `batch.targets` with segments isolated and positions reset."""
    seg = batch.segment_ids
    hidden = model.hidden_states(
        batch.input_ids, seg > 0, positions=batch.positions, segment_ids=seg
    )
    return chunked_logprobs(model, hidden, batch.targets, chunk)


# ------------------------------------------------------------------ trainer
def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


class Trainer:
    """Holds params, the frozen reference, the optimizer state and the compiled update programs.

    `model` is split once into what trains (`params`) and what does not (`frozen`). Full
    fine-tuning trains every parameter, and the reference policy is a copy of them at
    construction (the spec's frozen initial policy), skipped when β = 0. A model with LoRA
    adapters (`cfg.lora_rank` > 0) trains the adapters alone: the optimizer state covers only
    them, and the reference is the same frozen base with the adapters zeroed, so no second copy
    of the weights exists. `mesh` is a Mesh, a mesh shape for `sharding.make_mesh`, or None
    (all devices on 'fsdp').
    """

    def __init__(
        self,
        model: Decoder,
        *,
        loss: Any = None,
        optim: Any = None,
        packing: Any = None,
        update: Any = None,
        mesh: Mesh | Sequence[int] | None = None,
        rules: shd.Rules | str = "train",
        abstract: bool = False,
    ):
        self.loss_cfg = build(rl_loss.LossConfig, loss)
        self.optim_cfg = build(OptimConfig, optim)
        self.update_cfg = build(UpdateConfig, update)
        if mesh is None or not isinstance(mesh, Mesh):
            mesh = shd.make_mesh((1, -1, 1) if mesh is None else tuple(mesh))
        self.mesh = mesh
        self.rules = shd.rules_from(rules)
        batch_shards = math.prod(
            mesh.shape[a] for a in _batch_mesh_axes(self.rules) if a in mesh.shape
        )
        self.packing_cfg = build(PackingConfig, packing)
        if self.packing_cfg.row_multiple % batch_shards:
            self.packing_cfg = dataclasses.replace(
                self.packing_cfg, row_multiple=math.lcm(self.packing_cfg.row_multiple, batch_shards)
            )
        self.hosts = jax.process_count()
        if batch_shards % self.hosts:
            raise ValueError(
                f"the batch axes of mesh {dict(mesh.shape)} have {batch_shards} shards, not a "
                f"multiple of the {self.hosts} processes: every host must own whole batch shards"
            )
        # A host packs its share of a global micro-batch: 1/hosts of its rows and tokens.
        self._local_packing = dataclasses.replace(
            self.packing_cfg,
            row_multiple=self.packing_cfg.row_multiple // self.hosts,
            tokens_per_micro=max(1, self.packing_cfg.tokens_per_micro // self.hosts),
        )

        self.lora = model.cfg.lora_rank > 0
        trainable = nnx.LoRAParam if self.lora else nnx.Param
        self.graphdef, params, frozen = nnx.split(model, trainable, ...)
        self.param_shardings = shd.state_shardings(params, mesh, self.rules)
        self.frozen_shardings = shd.state_shardings(frozen, mesh, self.rules)
        self.tx, self.schedule = make_optimizer(self.optim_cfg)
        rep = _replicated(mesh)
        self.opt_shardings = optax.tree_map_params(
            self.tx,
            lambda _, s: s,
            jax.eval_shape(self.tx.init, params),
            self.param_shardings,
            transform_non_params=lambda _: rep,
        )
        # With adapters the reference needs no parameters of its own (adapters off).
        wants_ref = self.loss_cfg.kl_beta > 0 and not self.lora
        if abstract:
            # Shapes and shardings only (`nnx.eval_shape` models): the programs can be lowered
            # and compiled for their memory (experiments/plan.py), never run.
            self.params = _abstract(params, self.param_shardings)
            self.frozen = _abstract(frozen, self.frozen_shardings)
            self.ref_params = self.params if wants_ref else None
            self.opt_state = _abstract(jax.eval_shape(self.tx.init, params), self.opt_shardings)
        else:
            self.params = jax.device_put(params, self.param_shardings)
            self.frozen = jax.device_put(frozen, self.frozen_shardings)
            copy = jax.jit(
                lambda p: jax.tree.map(jnp.copy, p),
                in_shardings=(self.param_shardings,),
                out_shardings=self.param_shardings,
            )
            self.ref_params = copy(self.params) if wants_ref else None
            self.opt_state = jax.jit(
                self.tx.init, in_shardings=(self.param_shardings,), out_shardings=self.opt_shardings
            )(self.params)
        self.num_updates = 0
        self._batch_sharding = shd.batch_sharding(mesh, self.rules, 2)
        self._batch_shardings = PackedBatch(*[self._batch_sharding] * len(PackedBatch._fields))
        self._programs: dict[str, Any] = {}

    # ------------------------------------------------------------- public API
    @property
    def model(self) -> Decoder:
        """The current policy as a Decoder sharing the trainer's parameter buffers."""
        return nnx.merge(self.graphdef, self.params, self.frozen)

    @property
    def has_reference(self) -> bool:
        return self.loss_cfg.kl_beta > 0

    def host_model(self) -> Decoder:
        """The current policy with every parameter whole on this host's devices (rollouts,
        export). One process: `model` itself. Several: a collective all-gather, so every
        process must call it. With adapters, both the adapters and the frozen base are gathered."""
        if self.hosts == 1:
            return self.model
        full = self._program("gather")(self.params, self.frozen)
        local = jax.tree.map(lambda a: a.addressable_data(0), full)
        return nnx.merge(self.graphdef, *local)

    def step(self, rows: Sequence[StepRow]) -> dict[str, float]:
        """GRPO on one rollout batch: `epochs` passes, each split into `num_minibatches`
        optimizer updates. π_old is the sampler's log-probs stored in the rows."""
        return self._run(rows, "rl")

    def sft_step(self, rows: Sequence[StepRow]) -> dict[str, float]:
        """Supervised cross-entropy on the rows' masked action tokens (cold start). A trainer
        used only for SFT should be built with `loss=dict(kl_beta=0)`: no reference copy."""
        return self._run(rows, "sft")

    def update_packed(self, packed: Packed, kind: str = "rl") -> dict[str, Array]:
        """One optimizer update on already-packed micro-batches; returns device metrics."""
        acc = self._accumulate(packed, kind)
        apply = self._program("apply")
        self.params, self.opt_state, out = apply(self.params, self.opt_state, acc)
        out["lr"] = self.schedule(self.num_updates)
        self.num_updates += 1
        return out

    def gradients(self, packed: Packed, kind: str = "rl") -> tuple[Any, float]:
        """(∇loss, loss) of one minibatch without updating anything: for checks and probes."""
        acc = self._accumulate(packed, kind)
        grads = jax.tree.map(lambda g: g / acc["den"], acc["grads"])
        return grads, float(acc["num"] / acc["den"])

    def logprobs(self, packed: Packed, *, reference: bool = False) -> list[np.ndarray]:
        """Per-position log-probs of every micro-batch's targets under the current (or the
        reference) policy; `packed.action_values` maps them back to step rows."""
        if reference and not self.has_reference:
            raise ValueError("no reference params: the trainer was built with kl_beta = 0")
        fn = self._program("ref_logprobs" if reference else "logprobs")
        params = self.ref_params if reference and not self.lora else self.params
        return [np.asarray(fn(params, self.frozen, self._put(mb))) for mb in packed.micro_batches]

    # ------------------------------------------------------------- internals
    def _run(self, rows: Sequence[StepRow], kind: str) -> dict[str, float]:
        if not rows:
            raise ValueError("no step rows to train on")
        cfg = self.update_cfg
        t0 = time.perf_counter()
        outs, real, padded, trained, shapes = [], 0, 0, 0, set()
        for _ in range(cfg.epochs):
            rng = np.random.default_rng([cfg.shuffle_seed, self.num_updates])
            for part in split_minibatches(rows, cfg.num_minibatches, rng):
                packed = self._pack(part)
                real, padded = real + packed.real_tokens, padded + packed.padded_tokens
                trained += packed.loss_tokens
                shapes.update(packed.shapes)
                outs.append(self.update_packed(packed, kind))
        outs = jax.device_get(outs)
        if self.hosts > 1:  # host-side counts of every host's packing
            real, padded, trained = (int(v) for v in allgather_ints([real, padded, trained]).sum(0))
        metrics = _merge_update_metrics(outs)
        metrics.update(
            optimizer_updates=len(outs),
            trained_tokens=trained,
            packed_positions=padded,
            padding_waste=1.0 - real / max(padded, 1),
            micro_batch_shapes=len(shapes),
            update_seconds=time.perf_counter() - t0,
        )
        return metrics

    def _accumulate(self, packed: Packed, kind: str) -> dict[str, Any]:
        if kind not in ("rl", "sft"):
            raise ValueError(f"kind={kind!r}; choose 'rl' or 'sft'")
        micro = self._program(f"{kind}_micro")
        acc = self._program(f"{kind}_zero")()
        for mb in packed.micro_batches:
            acc = micro(self.params, self.frozen, self.ref_params, acc, self._put(mb))
        return acc

    def _pack(self, rows: Sequence[StepRow]) -> Packed:
        """This host's rows packed into its block of every global micro-batch."""
        if self.hosts == 1:
            return pack(rows, self.packing_cfg)
        # Agree first on the row length (the longest any host needs), then on the packed-row
        # count at that length; both are maxima, so no host's rows are cut.
        need = pack(rows, self._local_packing, packed_rows=1).micro_batches[0].shape[1]
        row_len = int(allgather_ints([need]).max())
        packed = pack(rows, self._local_packing, row_len=row_len, packed_rows=1)
        most = int(allgather_ints([packed.filled_rows]).max())
        if most != packed.filled_rows:
            packed = pack(rows, self._local_packing, row_len=row_len, packed_rows=most)
        return packed

    def _put(self, mb: PackedBatch) -> PackedBatch:
        if self.hosts == 1:
            return jax.device_put(mb, self._batch_shardings)
        # This host's rows are its block of the global micro-batch's rows.
        rows, row_len = mb.shape
        return PackedBatch(
            *[
                jax.make_array_from_process_local_data(
                    self._batch_sharding, np.asarray(a), (rows * self.hosts, row_len)
                )
                for a in mb
            ]
        )

    def program(self, name: str):
        """A compiled-on-first-call update program by name ('logprobs', '{rl,sft}_zero',
        '{rl,sft}_micro', 'apply', 'gather'), e.g. to lower it for its memory analysis."""
        return self._program(name)

    def _program(self, name: str):
        if name not in self._programs:
            self._programs[name] = self._build(name)
        return self._programs[name]

    def _loss(self, kind: str, logp, entropy, batch: PackedBatch, ref_logp):
        """(numerator, denominator, stat sums) of one micro-batch for `kind` ('rl' or 'sft')."""
        if kind == "rl":
            return rl_loss.grpo_loss(
                logp,
                batch.old_logp,
                ref_logp,
                batch.advantages,
                batch.loss_mask,
                batch.loss_ids,
                self.loss_cfg,
                entropy,
                sampler_logp=batch.sampler_logp,
            )
        return rl_loss.sft_loss(
            logp,
            batch.loss_mask,
            batch.loss_ids,
            self.update_cfg.sft_aggregation,
            self.loss_cfg.token_sum_norm,
            entropy,
        )

    def _build(self, name: str):
        """Compile one program: 'logprobs', '{rl,sft}_zero', '{rl,sft}_micro' or 'apply'."""
        graphdef, chunk, rep = self.graphdef, self.update_cfg.logprob_chunk, _replicated(self.mesh)
        p_sh, f_sh, b_sh = self.param_shardings, self.frozen_shardings, self._batch_shardings
        lora = self.lora

        mesh, rules = self.mesh, self.rules

        def logprobs(params, frozen, batch):
            with shd.activation_layout(mesh, rules):
                return packed_logprobs(nnx.merge(graphdef, params, frozen), batch, chunk)

        def reference_logprobs(ref_params, params, frozen, batch):
            # Adapters off: the frozen base with zeroed adapters is the initial policy.
            ref = jax.tree.map(jnp.zeros_like, params) if lora else ref_params
            return jax.lax.stop_gradient(logprobs(ref, frozen, batch)[0])

        if name in ("logprobs", "ref_logprobs"):
            if name == "logprobs":
                fn = lambda p, f, b: logprobs(p, f, b)[0]
            else:
                fn = lambda p, f, b: reference_logprobs(p, p, f, b)
            return jax.jit(fn, in_shardings=(p_sh, f_sh, b_sh), out_shardings=b_sh[0])
        if name == "apply":
            return self._build_apply()
        if name == "gather":
            full = jax.tree.map(lambda _: rep, (p_sh, f_sh))
            return jax.jit(lambda p, f: (p, f), in_shardings=(p_sh, f_sh), out_shardings=full)

        kind, _, what = name.partition("_")
        # Which stat sums this loss logs, from an abstract call on a 1x1 batch.
        dummy = PackedBatch(*[jax.ShapeDtypeStruct((1, 1), jnp.float32)] * len(PackedBatch._fields))
        int_ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
        dummy = dummy._replace(segment_ids=int_ids, loss_ids=int_ids)
        _, _, stat_shapes = jax.eval_shape(
            lambda b: self._loss(kind, b.old_logp, b.old_logp, b, b.old_logp), dummy
        )
        acc_sh = {"grads": p_sh, "num": rep, "den": rep, "stats": dict.fromkeys(stat_shapes, rep)}

        if what == "zero":

            def zero():
                z = jnp.zeros((), jnp.float32)
                grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), self.params)
                return {"grads": grads, "num": z, "den": z, "stats": dict.fromkeys(stat_shapes, z)}

            return jax.jit(zero, out_shardings=acc_sh)

        with_ref = kind == "rl" and self.has_reference

        def micro(params, frozen, ref_params, acc, batch):
            ref_logp = None
            if with_ref:
                ref_logp = reference_logprobs(ref_params, params, frozen, batch)

            def numerator(p):
                logp, entropy = logprobs(p, frozen, batch)
                num, den, stats = self._loss(kind, logp, entropy, batch, ref_logp)
                return num, (den, stats)

            (num, (den, stats)), grads = jax.value_and_grad(numerator, has_aux=True)(params)
            return {
                "grads": jax.tree.map(lambda a, g: a + g.astype(a.dtype), acc["grads"], grads),
                "num": acc["num"] + num,
                "den": acc["den"] + den,
                "stats": {k: acc["stats"][k] + v for k, v in stats.items()},
            }

        ref_sh = p_sh if self.ref_params is not None else None
        return jax.jit(
            micro,
            in_shardings=(p_sh, f_sh, ref_sh, acc_sh, b_sh),
            out_shardings=acc_sh,
            donate_argnums=(3,),
        )

    def _build_apply(self):
        tx, p_sh, o_sh, rep = (
            self.tx,
            self.param_shardings,
            self.opt_shardings,
            _replicated(self.mesh),
        )

        def apply(params, opt_state, acc):
            # The denominator is parameter-free, so Σ∇num / Σden is the exact gradient of the
            # whole minibatch's loss however it was split into micro-batches.
            den = acc["den"]
            grads = jax.tree.map(lambda g, p: (g / den).astype(p.dtype), acc["grads"], params)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            out = {"loss": acc["num"] / den, "grad_norm": optax.global_norm(grads)}
            out.update(acc["stats"])
            return params, opt_state, out

        return jax.jit(
            apply,
            in_shardings=(p_sh, o_sh, None),
            out_shardings=(p_sh, o_sh, rep),
            donate_argnums=(0, 1),
        )


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
    )


def _batch_mesh_axes(rules: shd.Rules) -> tuple[str, ...]:
    target = dict(rules).get("batch")
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def _merge_update_metrics(outs: list[dict[str, Any]]) -> dict[str, float]:
    """Per-update device metrics -> one dict for the rollout batch.

    Loss-like values are averaged over updates. The sampler/trainer log-prob gap is taken from
    the first update only: that one runs at π_old's parameters, so its gap is pure numerics.
    """
    per_update = []
    for out in outs:
        stats = {k: v for k, v in out.items() if k.endswith("_sum") or k == "tokens"}
        m = rl_loss.finalize_stats(stats)
        m.update(loss=float(out["loss"]), grad_norm=float(out["grad_norm"]), lr=float(out["lr"]))
        per_update.append(m)
    merged = {k: float(np.mean([m[k] for m in per_update])) for k in per_update[0]}
    for k in ("logprob_gap", "logprob_abs_gap"):
        if k in per_update[0]:
            merged[k] = per_update[0][k]
    merged["lr"] = per_update[-1]["lr"]
    merged.pop("tokens", None)
    return merged
