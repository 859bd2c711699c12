"""Memory plan of a GRPO preset on a topology, from XLA's own analysis of the compiled programs.

    python experiments/plan.py --config=configs/hotpotqa_grpo.py:qwen3_4b_tpu --shape=qwen3_4b \\
        --topology=all

No weights are made: the model is `nnx.eval_shape`'d, the trainer is built abstract, and the
train step (one micro-batch's gradient at the preset's remat policy and one row of
`packing.max_row_len` per device), the optimizer apply, the reference forward and the
sampler's prefill and decode at the rollout batch are lowered and compiled for a fake CPU
mesh of the topology's size (a subprocess with `--xla_force_host_platform_device_count`).
Per-device bytes come from `compiled.memory_analysis()`; the programs are compiled in f32 (an
upper bound on their bf16 temporaries, which XLA:CPU would inflate with f32 weight copies) and
the resident arrays are sized in the preset's dtypes. A fused attention kernel (splash, cudnn)
is planned as blockwise attention, which has the same O(T) memory. Training and rollouts
alternate, so the peak is the larger of: the update (params, reference, optimizer, gradient
accumulator, the micro-batch program's temporaries) and rollouts (params, reference, optimizer
state, the host's whole copy of the weights, KV cache, decode temporaries).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from agemem_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "GRPO config file[:preset].")
_TOPOLOGY = flags.DEFINE_string("topology", "all", "A TOPOLOGIES name, or 'all'.")
_SHAPE = flags.DEFINE_string(
    "shape", "", "Model shape (ModelConfig.preset name); empty: the config's model.random."
)
_WORKER = flags.DEFINE_string("worker", "", "Internal: measure one topology in this process.")
flags.mark_flags_as_required(["config"])

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Topology:
    devices: int
    hosts: int
    gib_per_device: float
    note: str


TOPOLOGIES = {
    "v5e-8": Topology(8, 1, 16, "TPU v5e, 8 chips x 16 GiB HBM"),
    "v5p-8": Topology(4, 1, 95, "TPU v5p, 4 chips x 95 GiB HBM"),
    "v5p-16": Topology(8, 2, 95, "TPU v5p, 8 chips on 2 hosts x 95 GiB"),
    "1xH100": Topology(1, 1, 80, "1 x H100 80 GB"),
    "8xH100": Topology(8, 1, 80, "8 x H100 80 GB"),
    "8xRTX4090": Topology(8, 1, 48, "8 x RTX 4090 48 GB (the paper's hardware)"),
}


def _mem(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    return {
        "args": int(m.argument_size_in_bytes),
        "out": int(m.output_size_in_bytes),
        "alias": int(m.alias_size_in_bytes),
        "temp": int(m.temp_size_in_bytes),
    }


def measure(config, shape: str, topo: Topology) -> dict[str, float]:
    """Per-device bytes of every program on this process's fake devices (see module doc)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import Mesh

    from agemem_jax import sampler as smp
    from agemem_jax import sharding as shd
    from agemem_jax.dataclass_config import build
    from agemem_jax.grpo import GRPOConfig
    from agemem_jax.models import Decoder, LoadConfig, ModelConfig
    from agemem_jax.models.qwen.model import KVCache
    from agemem_jax.optim import OptimConfig
    from agemem_jax.packing import PackedBatch, PackingConfig
    from agemem_jax.sampler import SamplingConfig
    from agemem_jax.train_step import Trainer, UpdateConfig

    load = build(LoadConfig, config.model)
    fields = load.model_fields()
    # A fused kernel does not lower on the fake CPU mesh; blockwise attention has the same
    # O(T) memory (no [T, T] scores, forward or backward), so it stands in for the plan.
    if fields["attention_impl"] in ("cudnn", "splash"):
        fields["attention_impl"] = "blockwise"
    mcfg = ModelConfig.preset(
        shape or load.random, dtype=load.dtype, param_dtype=load.param_dtype or load.dtype,
        **fields,
    )  # fmt: skip
    if config.model.vocab_size:
        mcfg = dataclasses.replace(mcfg, vocab_size=int(config.model.vocab_size))
    # XLA:CPU has no bf16 matmuls: it converts every bf16 weight to f32 around them, temporaries
    # an accelerator never makes (about 2x the weights). So the programs are compiled in f32,
    # whose temporaries bound the bf16 ones from above (every buffer is as large or twice as
    # large), while the resident arrays (weights, optimizer state, KV cache) are sized in the
    # preset's own dtypes.
    tcfg = mcfg
    if (mcfg.dtype, mcfg.param_dtype) != ("float32", "float32"):
        tcfg = dataclasses.replace(mcfg, dtype="float32", param_dtype="float32")
    g = build(GRPOConfig, config.grpo)
    mesh_cfg = build(shd.MeshConfig, config.mesh)
    make_trainer = lambda model: Trainer(
        model, loss=g.loss, optim=build(OptimConfig, config.optim),
        packing=build(PackingConfig, config.packing), update=build(UpdateConfig, config.trainer),
        mesh=shd.make_mesh(mesh_cfg.shape), rules=mesh_cfg.train_rules, abstract=True,
    )  # fmt: skip
    model = nnx.eval_shape(lambda: Decoder(tcfg, rngs=nnx.Rngs(0)))
    trainer = make_trainer(model)
    pk = trainer.packing_cfg
    rows = max(
        pk.row_multiple, pk.tokens_per_micro // pk.max_row_len // pk.row_multiple * pk.row_multiple
    )
    bsh = trainer._batch_sharding
    i32, f32 = jnp.int32, jnp.float32
    batch = PackedBatch(
        *[
            jax.ShapeDtypeStruct((rows, pk.max_row_len), i32 if f in ("input_ids", "targets",
                                 "positions", "segment_ids", "loss_ids") else f32, sharding=bsh)
            for f in PackedBatch._fields
        ]
    )  # fmt: skip
    zero = trainer.program("rl_zero").lower().compile()
    acc = jax.eval_shape(trainer.program("rl_zero"))
    acc = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        acc, zero.output_shardings,
    )  # fmt: skip
    micro = trainer.program("rl_micro").lower(
        trainer.params, trainer.frozen, trainer.ref_params, acc, batch
    )
    micro = micro.compile()
    apply = trainer.program("apply").lower(trainer.params, trainer.opt_state, acc).compile()
    ref = (
        trainer.program("logprobs")
        .lower(trainer.ref_params or trainer.params, trainer.frozen, batch)
        .compile()
    )
    ident = lambda tree: jax.jit(lambda t: jax.tree.map(lambda x: x + 0, t)).lower(tree).compile()
    nbytes = lambda tree: _mem(ident(tree))["args"]
    grads_b = _mem(zero)["out"]  # the f32 accumulator, whatever the parameters' dtype
    m_micro, m_apply, m_ref = _mem(micro), _mem(apply), _mem(ref)
    # The programs' own parameter bytes (f32), taken out of their arguments below, and the
    # preset's (its dtypes), which are what stays resident.
    params_t, opt_t = nbytes(trainer.params), nbytes(trainer.opt_state)
    ref_t = params_t if trainer.ref_params is not None else 0
    real = (
        trainer
        if tcfg is mcfg
        else make_trainer(nnx.eval_shape(lambda: Decoder(mcfg, rngs=nnx.Rngs(0))))
    )
    params_b = params_t if real is trainer else nbytes(real.params)
    opt_b = opt_t if real is trainer else nbytes(real.opt_state)
    ref_b = params_b if real.ref_params is not None else 0

    # Rollouts: this host's B*K/hosts rows on its own devices, weights whole (sample rules).
    sampling = build(SamplingConfig, config.sampling)
    local = jax.devices()[: topo.devices // topo.hosts]
    sizes = dict(zip(shd.MESH_AXES, mesh_cfg.shape, strict=True))
    tensor = sizes["tensor"] if sizes["tensor"] > 0 and len(local) % sizes["tensor"] == 0 else 1
    smesh = Mesh(np.asarray(local).reshape(1, len(local) // tensor, tensor), shd.MESH_AXES)
    srules = shd.rules_from(mesh_cfg.sample_rules)
    shards = len(local) // tensor
    n_rows = g.tasks_per_step * g.group_size // topo.hosts
    b = -(-n_rows // shards) * shards
    slots = int(config.memory.t_max) + sampling.max_new_tokens
    # The sampler's own layout: with `sampling.unroll_layers` one module (and cache buffer) per
    # layer, else the training model's scanned one.
    place = lambda a, axes: jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=shd.named_sharding(axes, smesh, srules, a.shape)
    )

    def sampler_trees(cfg):
        """(graphdef, weights, KV cache) of the sampler, abstract and placed, for `cfg`."""
        scfg = smp._sampling_cfg(cfg) if sampling.unroll_layers else cfg
        graphdef, sparams = nnx.split(nnx.eval_shape(lambda: Decoder(scfg, rngs=nnx.Rngs(0))))
        sparams = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            sparams, shd.state_shardings(sparams, smesh, srules),
        )  # fmt: skip
        cache = jax.eval_shape(lambda: KVCache.zeros(scfg, b, slots))
        axes = smp._cache_axes(cache)
        return graphdef, sparams, jax.tree.map(lambda a: place(a, axes), cache)

    graphdef, sparams, cache = sampler_trees(tcfg)
    scfg = smp._sampling_cfg(tcfg) if sampling.unroll_layers else tcfg
    vec = lambda dt: place(jax.ShapeDtypeStruct((b,), dt), ("batch",))
    hidden = place(jax.ShapeDtypeStruct((b, scfg.hidden_size), scfg.dtype), ("batch", None))
    chunk = smp.bucket(256)
    ids = place(jax.ShapeDtypeStruct((b, chunk), i32), ("batch", None))
    layout = (smesh, srules)
    prefill = smp._prefill.lower(
        graphdef, sparams, cache, vec(i32), hidden, ids, vec(i32), vec(jnp.bool_), layout=layout
    ).compile()
    n_out = smp.bucket(sampling.max_new_tokens, 128)
    out2 = lambda dt: place(jax.ShapeDtypeStruct((b, n_out), dt), ("batch", None))
    turn = smp._Turn(
        step=jax.ShapeDtypeStruct((), i32), index=vec(i32), last=vec(i32), done=vec(jnp.bool_),
        finish=vec(i32), which=vec(i32), stop_state=vec(i32), n_gen=vec(i32), draws=vec(i32),
        tokens=out2(i32), logp=out2(f32), model_logp=out2(f32),
    )  # fmt: skip
    # Per-row sampling: a key, temperature and top-p per row; a 4-state stop-string table.
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), b))
    keys = jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=vec(i32).sharding)
    decode = smp._decode.lower(
        graphdef, sparams, cache, turn, hidden, vec(i32), keys, vec(f32), vec(f32),
        jax.ShapeDtypeStruct((2,), i32), jax.ShapeDtypeStruct((mcfg.vocab_size, 4), i32),
        greedy=False, top_k=0, use_top_p=True, layout=layout,
    ).compile()  # fmt: skip
    m_pre, m_dec = _mem(prefill), _mem(decode)
    if tcfg is not mcfg:
        _, sparams, cache = sampler_trees(mcfg)
    weights_b, kv_b = nbytes(sparams), nbytes(cache)

    train_peak = params_b + ref_b + opt_b + max(
        m_micro["args"] - params_t - ref_t + m_micro["temp"] + m_micro["out"] - m_micro["alias"],
        m_apply["args"] - params_t - opt_t + m_apply["temp"] + m_apply["out"] - m_apply["alias"],
        m_ref["args"] - ref_t + m_ref["temp"] + m_ref["out"],
    )  # fmt: skip
    roll = params_b + ref_b + opt_b + weights_b + kv_b + max(m_pre["temp"], m_dec["temp"])
    return {
        "params": params_b, "reference": ref_b, "optimizer": opt_b, "grads": grads_b,
        "activations": m_micro["temp"], "ref_forward_temp": m_ref["temp"],
        "sampler_weights": weights_b, "kv_cache": kv_b, "prefill_temp": m_pre["temp"],
        "decode_temp": m_dec["temp"], "train_peak": train_peak, "rollout_peak": roll,
        "peak": max(train_peak, roll), "micro_rows": rows, "row_len": pk.max_row_len,
        "rollout_rows_per_device": b // shards, "kv_slots": slots, "remat": load.remat_policy,
    }  # fmt: skip


def advice(m: dict[str, float], cap: float) -> str:
    """What to change when the peak is over the device's memory (biggest part first)."""
    if m["peak"] <= cap:
        return ""
    tips = []
    if m["rollout_peak"] > cap:
        if m["kv_cache"] + m["sampler_weights"] > 0.5 * cap:
            tips.append("shard sampling over a tensor axis (mesh.shape=(1,-1,T)) or fewer "
                        "rollout rows per device (more devices, smaller grpo.tasks_per_step)")  # fmt: skip
    if m["train_peak"] > cap:
        if m["activations"] > 0.3 * cap:
            tips.append(
                "model.remat_policy=full"
                if m.get("remat") != "full"
                else "shorter step rows "
                "(memory.t_max + sampling.max_new_tokens set packing.max_row_len)"
            )
        if m["params"] + m["optimizer"] + m["grads"] + m["reference"] > 0.5 * cap:
            tips.append("more devices on fsdp, or adapters (LoRA) instead of full fine-tuning")
    return "; ".join(tips) or "more devices per replica"


def _row(name: str, topo: Topology, m: dict[str, float]) -> str:
    cap = topo.gib_per_device * GIB
    g = lambda k: f"{m[k] / GIB:7.2f}"
    fits = "yes" if m["peak"] <= cap else "NO"
    return (f"{name:10s} {topo.devices:2d}x{topo.gib_per_device:>4g}G {g('params')} "
            f"{g('optimizer')} {g('grads')} {g('activations')} {g('kv_cache')} "
            f"{g('train_peak')} {g('rollout_peak')}  {fits:3s} {advice(m, cap)}")  # fmt: skip


HEADER = ("topology   devices   params     opt   grads   activ  kvcache  train_pk  roll_pk  fits"
          "  (GiB per device)")  # fmt: skip


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if cli.printed_config(config):
        return
    if _WORKER.value:
        print("PLAN " + json.dumps(measure(config, _SHAPE.value, TOPOLOGIES[_WORKER.value])))
        return
    if not (_SHAPE.value or config.model.random):
        raise ValueError("pass --shape (a ModelConfig preset) for a checkpoint-backed preset")
    names = list(TOPOLOGIES) if _TOPOLOGY.value == "all" else [_TOPOLOGY.value]
    for n in names:
        if n not in TOPOLOGIES:
            raise ValueError(f"unknown topology {n!r}; choose one of {list(TOPOLOGIES)} or all")
    print(HEADER)
    for n in names:
        topo = TOPOLOGIES[n]
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={topo.devices}")  # fmt: skip
        cmd = [sys.executable, str(Path(__file__).resolve()), f"--worker={n}"]
        cmd += [a for a in sys.argv[1:] if not a.startswith("--topology")]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PLAN ")]
        if out.returncode or not lines:
            raise RuntimeError(f"measuring {n} failed:\n{out.stderr[-3000:]}")
        m = json.loads(lines[-1][5:])
        print(_row(n, topo, m), flush=True)
        print("JSON " + json.dumps({"topology": n, **m}), flush=True)


if __name__ == "__main__":
    cli.run(main)
