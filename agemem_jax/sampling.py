"""Sampling from a `Decoder`: `generate` for one-shot batches, `SamplerSession` for multi-turn.

    from agemem_jax.sampling import generate
    outs = generate(model, tokenizer, ["Hi!", [{"role": "user", "content": "2+2?"}]], 64,
                    temperature=1.0, top_p=0.95, stop=("</answer>",), seed=0)
    outs[0].tokens, outs[0].text, outs[0].logprobs, outs[0].finish_reason

Everything runs in the jitted programs of `agemem_jax.sampler_session`; see there for the cache
layout, ragged continuation, stop handling and shape bucketing.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from agemem_jax import sharding as shd
from agemem_jax.models.qwen.model import Decoder
from agemem_jax.sampler_session import (
    FINISH_REASONS,
    Completion,
    SamplerSession,
    SamplingParams,
    bucket,
    compile_count,
    default_eos_ids,
    select_tokens,
)

__all__ = [
    "FINISH_REASONS",
    "Completion",
    "SamplerSession",
    "SamplingParams",
    "bucket",
    "compile_count",
    "default_eos_ids",
    "generate",
    "select_tokens",
]


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
    return session.decode(max_new_tokens, sampling)
