"""The GRPO loop: learning is real, resuming is exact, SIGTERM saves, SFT exports a policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import make_tiny_tokenizer
from flax import nnx

from agemem_jax import grpo, rl_loss
from agemem_jax.checkpointing import Checkpointer
from agemem_jax.config_lib import from_file
from agemem_jax.judges import JudgeRequest
from agemem_jax.metrics_log import flatten, read_jsonl
from agemem_jax.models import Decoder, ModelConfig
from agemem_jax.packing import StepRow
from agemem_jax.sampler import generate
from agemem_jax.train_step import Trainer

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("seconds", "lr")  # keys whose values are wall-clock, not results


def load_preset(name: str):
    return from_file("configs/hotpotqa_grpo.py", name)


@pytest.fixture(scope="module")
def tiny_tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    make_tiny_tokenizer(128).save_pretrained(d)
    return d


def tiny_config(tok_dir, **train):
    c = load_preset("tiny_cpu")
    c.model.tokenizer = str(tok_dir)
    c.model.vocab_size = 128
    c.train.update(train)
    return c


# ----------------------------------------------------------------------- learning
def bandit_run(lr: float, steps: int = 12, seed: int = 0) -> list[float]:
    """A one-turn task through the real sampler and trainer: reward = share of target tokens.

    Nothing is mocked: rollouts are sampled (temperature 1) with their raw log-probs as π_old,
    advantages are GRPO's group-normalized ones, and the update is the trainer's.
    """
    cfg = ModelConfig.tiny(vocab_size=64)
    model = Decoder(cfg, rngs=nnx.Rngs(seed))
    trainer = Trainer(
        model,
        loss={"kl_beta": 0.0},
        optim={"learning_rate": lr, "schedule": "constant", "warmup_steps": 0},
        packing={"min_row_len": 32, "tokens_per_micro": 1024},
    )
    targets, k, n_new = np.arange(16), 16, 8  # a quarter of the vocabulary
    prompt = [3, 5, 9, 11]
    rewards = []
    for step in range(steps):
        outs = generate(
            trainer.model, None, [prompt] * k, n_new, temperature=1.0, seed=step, eos_ids=()
        )
        r = np.asarray([np.isin(o.tokens, targets).mean() for o in outs])
        rewards.append(float(r.mean()))
        adv = rl_loss.group_advantages(r[None], eps=1e-6)[0]
        rows = [
            StepRow(prompt, o.tokens, o.model_logprobs, float(a))
            for o, a in zip(outs, adv, strict=True)
        ]
        trainer.step(rows)
    return rewards


def test_grpo_learns_and_lr_zero_does_not():
    learned = bandit_run(lr=3e-2)
    frozen = bandit_run(lr=0.0)
    # Same seeds, so the first step is the same policy in both runs.
    assert learned[0] == frozen[0]
    assert np.mean(learned[-3:]) > np.mean(learned[:3]) + 0.2, learned
    assert abs(np.mean(frozen[-3:]) - np.mean(frozen[:3])) < 0.1, frozen


# ----------------------------------------------------------------------- the loop
def _strip(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if not any(t in k for t in TIMING)} for m in metrics]


def _params(workdir: Path, step: int, like):
    ckpt = Checkpointer(workdir)
    params, _, loop = ckpt.restore(step, like.params, like.opt_state)
    ckpt.close()
    return params, loop


def test_resume_is_exact(tiny_tok_dir, tmp_path):
    straight = grpo.train(tiny_config(tiny_tok_dir, steps=3), tmp_path / "a", progress=False)
    first = grpo.train(tiny_config(tiny_tok_dir, steps=2), tmp_path / "b", progress=False)
    rest = grpo.train(tiny_config(tiny_tok_dir, steps=3), tmp_path / "b", progress=False)
    assert len(straight) == 3 and len(first) == 2 and len(rest) == 1
    assert _strip(first + rest) == _strip(straight)
    like = grpo.build(tiny_config(tiny_tok_dir)).trainer
    pa, loop_a = _params(tmp_path / "a", 3, like)
    pb, loop_b = _params(tmp_path / "b", 3, like)
    assert loop_a == loop_b == {"step": 3, "num_updates": 3}
    for (path, a), (_, b) in zip(nnx.to_flat_state(pa), nnx.to_flat_state(pb), strict=True):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value), err_msg=str(path))
    # The metrics file was written once per step, resumed run included.
    assert [r["step"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")] == [1, 2, 3]
    for key in ("reward_mean", "reward_std", "kl", "clip_fraction", "entropy", "loss", "grad_norm",
                "tokens_sampled", "trained_tokens", "rollout_seconds", "update_seconds",
                "reward/compression", "reward/storage", "tool_calls/Add_memory"):  # fmt: skip
        assert key in flatten(straight[0]), key
    assert (tmp_path / "a" / "tensorboard").is_dir()


def test_greedy_training_is_refused(tiny_tok_dir):
    c = tiny_config(tiny_tok_dir)
    c.sampling.temperature = 0.0
    with pytest.raises(ValueError, match="greedy"):
        grpo.build(c)


def test_tempered_step_with_a_frozen_local_judge(tiny_tok_dir, tmp_path):
    """One GRPO step at temperature 0.7 judged by a separate random checkpoint: the sampler's
    log-probs reach the loss (importance weights differ from 1), the judge model shares no
    array with the policy and is unchanged by the update, and the step reports exactly the
    failures the judge counted."""
    from conftest import save_tiny_hf

    save_tiny_hf("qwen3", tmp_path / "judge")
    c = tiny_config(tiny_tok_dir, steps=1)
    c.sampling.temperature = 0.7
    c.judge.update(kind="local", checkpoint=str(tmp_path / "judge"), max_tokens=4)
    s = grpo.build(c)
    judge_leaves = [np.array(x) for x in jax.tree.leaves(nnx.state(s.judge.model))]
    policy_ids = {id(x) for x in jax.tree.leaves(nnx.state(s.trainer.model))}
    assert not policy_ids & {id(x) for x in jax.tree.leaves(nnx.state(s.judge.model))}
    m = grpo.grpo_step(s, 0)
    assert 0.0 < m["is_weight_mean"] and m["is_weight_mean"] != 1.0
    assert 0.0 <= m["is_truncated_fraction"] <= 1.0
    # A random policy seldom answers or stores anything, so the judge may not be asked at all;
    # whatever it failed on is what the step reports.
    assert m["judge_failures"] == s.judge.stats["failures"]
    scores = s.judge.score([JudgeRequest("task", "Who?", "Paris", "paris")])
    assert s.judge.stats["replies"] >= 1 and (scores[0] is None or 0 <= scores[0] <= 1)
    for before, after in zip(judge_leaves, jax.tree.leaves(nnx.state(s.judge.model)), strict=True):
        np.testing.assert_array_equal(before, np.asarray(after))


def test_sigterm_saves_then_stops(tiny_tok_dir, tmp_path):
    cmd = [
        sys.executable, "experiments/train.py", "--config=configs/hotpotqa_grpo.py:tiny_cpu",
        f"--workdir={tmp_path}", f"--config.model.tokenizer={tiny_tok_dir}",
        "--config.model.vocab_size=128", "--config.train.steps=50",
        "--config.train.save_every=100",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]
    done = len(read_jsonl(metrics))
    assert 1 <= done < 50
    # save_every=100 would never have saved: this checkpoint is the preemption save.
    assert Checkpointer(tmp_path).latest_step() == done


def test_sft_then_export(tiny_tok_dir, tmp_path):
    c = tiny_config(tiny_tok_dir)
    c.sft.update(steps=2, rows_per_step=4)
    c.data.limit = 2
    hist = grpo.sft(c, tmp_path, progress=False)
    assert len(hist) == 2 and all(np.isfinite(h["loss"]) for h in hist)
    assert hist[0]["trained_tokens"] > 0
    export = tmp_path / "export"
    assert (export / "config.json").is_file() and (export / "model.safetensors").is_file()
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3ForCausalLM"] and cfg["vocab_size"] == 128
    if os.environ.get("CI"):
        return
    # The export is a checkpoint the RL config can start from.
    c2 = tiny_config(tiny_tok_dir, steps=1, export=False)
    c2.model.random = ""
    c2.model.checkpoint = str(export)
    assert len(grpo.train(c2, tmp_path / "rl", progress=False)) == 1
