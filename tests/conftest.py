"""Shared fixtures: tiny tokenizers and tiny random HF checkpoints built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a hub; transformers must not try.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

WORDS = (
    "the a of to and in is was on for with as by at from that it this be are or an his her "
    "paris france city river capital who what when where which born year film band album "
    "memory store fact answer question think tool call"
).split()


def make_tiny_tokenizer(vocab_size: int = 128):
    """A word-level ChatML tokenizer with exactly `vocab_size` entries, built without a hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = [*specials, "\n", "system", "user", "assistant", "tool"]
    vocab += [w for w in WORDS if w not in vocab]
    vocab += [f"w{i}" for i in range(vocab_size - len(vocab))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


def hf_tiny_config(family: str, vocab_size: int = 128, **kw):
    """A small transformers config of each family, shaped to exercise GQA and every switch."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        pad_token_id=1,
        bos_token_id=1,
        eos_token_id=3,
    )
    common.update(kw)
    if family == "qwen2":
        return Qwen2Config(rope_theta=10_000.0, tie_word_embeddings=False, **common)
    if family == "qwen3":
        return Qwen3Config(head_dim=32, rope_theta=1_000_000.0, tie_word_embeddings=True, **common)
    if family == "llama":
        return LlamaConfig(rope_theta=100_000.0, tie_word_embeddings=True, **common)
    raise ValueError(family)


def save_tiny_hf(family: str, out: Path, seed: int = 0, **kw):
    """Random tiny HF model of `family` saved (with a tokenizer) to `out`; returns the torch model."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = hf_tiny_config(family, **kw)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    # Random init leaves norms at 1 and biases at 0; perturb them so the mapping is really tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out)
    make_tiny_tokenizer(cfg.vocab_size).save_pretrained(out)
    return model
