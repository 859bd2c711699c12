"""The model as the acting policy: episodes' contexts in, sampled turns (ids + π_old) out.

Every rollout of a batch is one sampler row. Before each action the policy compares the row's
cached ids with the context the environment rendered: when the cache is a prefix (the usual
case: an observation or the next message was appended) only the new ids are prefilled at the
row's own offset; when a tool or a stage reset edited the context, the row alone is reset and
re-prefilled. Nothing the model produced is ever re-tokenized.
"""

from __future__ import annotations

from collections.abc import Sequence

from agemem_jax.chat import ChatFormat
from agemem_jax.policies import Action, AgentView
from agemem_jax.sampler import SamplerSession, SamplingConfig, generate


class ModelPolicy:
    """Samples each rollout's next turn with a `SamplerSession`, one row per rollout."""

    name = "model"

    def __init__(
        self,
        model,
        tokenizer,
        sampling: SamplingConfig | None = None,
        *,
        max_len: int = 8192,
        mesh=None,
        rules="sample",
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingConfig()
        self.max_len = max_len
        self.mesh, self.rules = mesh, rules
        self.session: SamplerSession | None = None
        self._cached: list[tuple[int, ...]] = []
        self.stats = {"prefilled_tokens": 0, "row_resets": 0, "generated_tokens": 0}

    def begin(self, n_rows: int, seed: int = 0) -> None:
        """A fresh session for a batch of episodes; it reads the model's current weights."""
        self.session = SamplerSession(
            self.model,
            self.tokenizer,
            batch_size=n_rows,
            max_len=self.max_len,
            stop=self.sampling.stop,
            seed=seed,
            mesh=self.mesh,
            rules=self.rules,
        )
        self._cached = [()] * n_rows
        self.stats = dict.fromkeys(self.stats, 0)  # per batch of episodes

    def act(self, views: Sequence[AgentView]) -> list[Action]:
        if self.session is None:
            raise RuntimeError("ModelPolicy.act before begin(): the runner calls begin()")
        appends: dict[int, list[int]] = {}
        resets: dict[int, list[int]] = {}
        for v in views:
            ids, cached = v.prompt_ids, self._cached[v.row]
            if cached and len(cached) < len(ids) and ids[: len(cached)] == cached:
                appends[v.row] = list(ids[len(cached) :])
                self.stats["prefilled_tokens"] += len(ids) - len(cached)
            else:
                resets[v.row] = list(ids)
                self.stats["prefilled_tokens"] += len(ids)
        self.stats["row_resets"] += len(resets)
        if len(resets) == self.session.num_rows:
            # A stage reset edits every row at once: one batched prefill instead of one per row.
            self.session.start([resets[r] for r in range(self.session.num_rows)])
        else:
            for row, ids in resets.items():
                self.session.reset_row(row, ids)
        if appends:
            self.session.append(appends)
        rows = [v.row for v in views]
        outs = self.session.decode(self.sampling.max_new_tokens, self.sampling.params, rows=rows)
        actions = []
        for v in views:
            c = outs[v.row]
            if c is None:  # cannot happen: every view's row was asked to decode
                raise RuntimeError(f"the sampler returned nothing for row {v.row}")
            self._cached[v.row] = tuple(v.prompt_ids) + tuple(c.tokens)
            self.stats["generated_tokens"] += len(c.tokens)
            actions.append(
                Action(
                    text=c.text or "",
                    token_ids=list(c.tokens),
                    logprobs=list(c.model_logprobs),
                    # μ differs from π_old only away from 1/1/0; there rl_loss reweights by μ.
                    sampler_logprobs=None if self.sampling.samples_pi_old else list(c.logprobs),
                    finish_reason=c.finish_reason,
                )
            )
        return actions


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
