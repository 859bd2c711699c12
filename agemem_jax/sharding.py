"""Meshes and the one rule table that maps logical axis names to mesh axes.

Parameters name their axes logically (`embed`, `mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`,
`layers`, `norm`, and `lora` for adapter ranks); activations use `batch`. A rule table is a tuple of (logical, mesh axes) pairs,
so a config can swap the training layout (FSDP over `embed`) for the sampling one (replicated
weights, batch over data and fsdp) without touching model code.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

TRAIN_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("lora", None),  # adapter rank: small, replicated; the other axis follows its projection
)

# Sampling re-gathers FSDP shards once per rollout instead of once per decoded token.
SAMPLE_RULES: Rules = tuple((k, None if k == "embed" else v) for k, v in TRAIN_RULES)

RULE_TABLES = {"train": TRAIN_RULES, "sample": SAMPLE_RULES}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The device mesh and the rule tables of each phase: the `mesh` config block."""

    shape: tuple[int, ...] = (1, 1, -1)  # (data, fsdp, tensor); -1 takes the remaining devices
    sample_rules: str = "sample"  # RULE_TABLES entry for rollouts
    train_rules: str = "train"  # RULE_TABLES entry for the update

    def __post_init__(self):
        for name in (self.sample_rules, self.train_rules):
            if name not in RULE_TABLES:
                raise ValueError(
                    f"unknown rule table {name!r}; choose one of {sorted(RULE_TABLES)}"
                )


def make_mesh(shape: Sequence[int] = (1, 1, -1), axes: Sequence[str] = MESH_AXES) -> Mesh:
    """A mesh over all devices; one entry of `shape` may be -1 to take what is left."""
    n = jax.device_count()
    shape = list(shape)
    if len(shape) != len(axes):
        raise ValueError(f"mesh shape {shape} does not match axes {tuple(axes)}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if n % known:
            raise ValueError(f"mesh shape {shape} does not divide {n} devices")
        shape[shape.index(-1)] = n // known
    if math.prod(shape) != n:
        raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, have {n}")
    devices = np.asarray(jax.devices()).reshape(shape)
    return Mesh(devices, tuple(axes))


def rules_from(table: str | Rules | Sequence) -> Rules:
    if isinstance(table, str):
        if table not in RULE_TABLES:
            raise ValueError(f"unknown rule table {table!r}; choose one of {sorted(RULE_TABLES)}")
        return RULE_TABLES[table]
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in table)


def logical_spec(
    axes: Sequence[str | None],
    rules: Rules,
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
) -> PartitionSpec:
    """PartitionSpec for logical `axes`. With `shape` and `mesh`, mesh axes that do not divide a
    dimension (or are already used) are dropped, so a 2-kv-head model still loads on tensor=4."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        target = table.get(name) if name is not None else None
        if target is None:
            out.append(None)
            continue
        keep = []
        size = 1
        for ax in (target,) if isinstance(target, str) else target:
            if ax in used:
                continue
            if mesh is not None:
                n = mesh.shape[ax]
                if shape is not None and shape[i] % (size * n):
                    continue
                size *= n
            keep.append(ax)
        used.update(keep)
        out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    return PartitionSpec(*out)


def named_sharding(
    axes: Sequence[str | None], mesh: Mesh, rules: Rules, shape: Sequence[int] | None = None
) -> NamedSharding:
    return NamedSharding(mesh, logical_spec(axes, rules, shape, mesh))


def param_axes(var: nnx.Variable) -> tuple[str | None, ...]:
    axes = var.get_metadata().get("axes")
    if axes is None:
        return (None,) * len(var.value.shape)
    return tuple(axes)


def state_shardings(state, mesh: Mesh, rules: Rules):
    """NamedSharding for every Variable of an nnx State (same tree structure)."""

    def one(var):
        return var.replace(named_sharding(param_axes(var), mesh, rules, var.value.shape))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_module(module: nnx.Module, mesh: Mesh, rules: Rules | str = "train") -> nnx.Module:
    """Place every parameter of `module` by its logical axes (in place) and return it."""
    rules = rules_from(rules)
    state = nnx.state(module)
    shardings = state_shardings(state, mesh, rules)
    placed = jax.tree.map(
        lambda v, s: v.replace(jax.device_put(v.value, s.value)),
        state,
        shardings,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    nnx.update(module, placed)
    return module


def batch_sharding(mesh: Mesh, rules: Rules | str, ndim: int) -> NamedSharding:
    """Activations and token batches: leading axis over the `batch` rule, the rest replicated."""
    spec = logical_spec(("batch",) + (None,) * (ndim - 1), rules_from(rules))
    return NamedSharding(mesh, spec)


# The layout activations take while a program is traced (`activation_layout`). Without it the
# SPMD partitioner is free to shard activations like the FSDP-sharded weights they meet, or to
# replicate them: one replicated [rows, T, hidden] per layer grows with the device count.
_ACTIVATIONS: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "activation_layout", default=None
)


@contextlib.contextmanager
def activation_layout(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """While tracing inside this block, `constrain` pins activations to `mesh` under `rules`."""
    token = _ACTIVATIONS.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVATIONS.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """`x` with its logical `axes` pinned to the active activation layout (as is without one)."""
    layout = _ACTIVATIONS.get()
    if layout is None:
        return x
    mesh, rules = layout
    return jax.lax.with_sharding_constraint(x, named_sharding(axes, mesh, rules, x.shape))
