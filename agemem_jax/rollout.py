"""The model and everything that talks to it: the acting policy, the summarizer's completions.

Training holds one `ModelStack` around the trainer's weights and swaps them in before each
batch of rollouts; evaluation builds one from the config (`builders.model_stack`).
"""

from __future__ import annotations

from collections.abc import Sequence

from agemem_jax.chat import ChatFormat
from agemem_jax.policies import ModelPolicy
from agemem_jax.sampler import SamplingConfig, generate


class ModelStack:
    """The model, its tokenizer and everything that talks to it: policy and summarizer (the
    judge has a model of its own, `judges.LocalJudge.from_checkpoint`)."""

    def __init__(self, model, tokenizer, sampling: SamplingConfig, *, max_len: int, mesh=None):
        self.model = model
        self.tokenizer = tokenizer
        self.chat = ChatFormat(tokenizer)
        self.sampling = sampling
        self.mesh = mesh
        self.policy = ModelPolicy(model, tokenizer, sampling, max_len=max_len, mesh=mesh)

    def set_model(self, model) -> None:
        """Sample with new weights from the next batch of episodes on (GRPO's π_old)."""
        self.model = model
        self.policy.model = model

    def complete_batch(self, prompts: Sequence[list[dict[str, str]]]) -> list[str]:
        """Greedy chat completions (the summarizer)."""
        outs = generate(
            self.model,
            self.tokenizer,
            list(prompts),
            self.sampling.summary_max_new_tokens,
            temperature=0.0,
        )
        return [o.text or "" for o in outs]

    def complete(self, messages: list[dict[str, str]]) -> str:
        return self.complete_batch([messages])[0]
