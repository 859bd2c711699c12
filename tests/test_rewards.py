"""The composite reward of spec section 6, against values computed by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest

from agemem_jax.dataclass_config import build
from agemem_jax.judges import Judge, RuleJudge
from agemem_jax.rewards import (
    EpisodeFacts,
    Reward,
    RewardConfig,
    compute_reward,
    compute_rewards,
    preservation,
)

EXACT = 1e-12
FACTS = ("Alice was born in Paris.", "Paris is the capital of France.")
# Content tokens of the facts: {alice, born, paris} and {paris, capital, france}.

# A: answered right, compact context, Summary used early, good memory use.
EPISODE_A = EpisodeFacts(
    question="Where was Alice born?",
    gold_answer="Paris",
    supporting_facts=FACTS,
    answer="Paris",
    context_tokens=2048,
    kept_text="[summary] Alice was born in Paris.",
    reduced_before_limit=True,
    added_entries=FACTS,
    maintained=False,
    retrieved=("Alice was born in Paris.",),
    rounds=10,
    n_max=20,
    token_usage=5000,
)
# task 1; compression 1 - 2048/8192 = 3/4, preventive 1, preservation 1 ("Alice" kept)
# -> context 11/12; storage 2/2, maintenance 0, relevance 1 -> memory 2/3; no penalty.
# total = (1 + 11/12 + 2/3) / 3 = 31/36.

# B: partly right answer, context over budget, key item lost, mixed memory, overflow.
EPISODE_B = EpisodeFacts(
    question="Where was Alice born?",
    gold_answer="Paris",
    supporting_facts=FACTS,
    answer="the city of Paris",
    context_tokens=9000,
    kept_text="[summary] Someone was born in Paris.",
    reduced_before_limit=False,
    added_entries=("Alice was born in Paris; she liked cats.", "Bananas are yellow", "Paris"),
    maintained=True,
    retrieved=("Bananas are yellow", "Alice born Paris"),
    rounds=12,
    n_max=12,
    token_usage=9000,
)
# task: F1("city of paris", "paris") = 2·(1/3)·1 / (4/3) = 1/2.
# compression max(0, 1 - 9000/8192) = 0, preventive 0, preservation 0 -> context 0.
# storage: entry scores 3/4 (P 3/5, R 1), 0, and 1/2 (P 1, R 1/3) -> 2 of 3 reach 0.5 -> 2/3;
# maintenance 1; relevance (0 + 1)/2 = 1/2 -> memory (2/3 + 1 + 1/2)/3 = 13/18.
# rounds 12 = N_max: no penalty; usage 9000 > 8192: -0.5.
# total = 1/2·1/3 + 0 + 13/18·1/3 - 1/2 = -5/54.

# C: no answer, too many rounds, nothing stored or retrieved.
EPISODE_C = EpisodeFacts(
    question="Which club did Ronald Koeman manage in 2014?",
    gold_answer="Southampton",
    supporting_facts=("Ronald Koeman managed Southampton from 2014.",),
    answer=None,
    context_tokens=6144,
    kept_text="Ronald Koeman took a new club in 2014, the user said.",
    reduced_before_limit=True,
    rounds=31,
    n_max=30,
    token_usage=8192,
)
# task = P_no_answer = -1; compression 1/4, preventive 1, preservation 1 -> context 3/4;
# storage 0/max(1, 0) = 0, maintenance 0, relevance 0 -> memory 0;
# rounds 31 > 30: -1; usage 8192 is not above T_max: 0.
# total = -1/3 + 1/4 + 0 - 1 = -13/12.

EXPECTED = {
    "A": dict(
        total=31 / 36,
        task=1.0,
        context=11 / 12,
        compression=0.75,
        preventive=1.0,
        preservation=1.0,
        memory=2 / 3,
        storage=1.0,
        maintenance=0.0,
        relevance=1.0,
        penalty=0.0,
        no_answer=0.0,
        rounds_penalty=0.0,
        overflow_penalty=0.0,
        judge_failures=0,
    ),
    "B": dict(
        total=-5 / 54,
        task=0.5,
        context=0.0,
        compression=0.0,
        preventive=0.0,
        preservation=0.0,
        memory=13 / 18,
        storage=2 / 3,
        maintenance=1.0,
        relevance=0.5,
        penalty=-0.5,
        no_answer=0.0,
        rounds_penalty=0.0,
        overflow_penalty=-0.5,
        judge_failures=0,
    ),
    "C": dict(
        total=-13 / 12,
        task=-1.0,
        context=0.75,
        compression=0.25,
        preventive=1.0,
        preservation=1.0,
        memory=0.0,
        storage=0.0,
        maintenance=0.0,
        relevance=0.0,
        penalty=-1.0,
        no_answer=-1.0,
        rounds_penalty=-1.0,
        overflow_penalty=0.0,
        judge_failures=0,
    ),
}


def test_three_hand_computed_episodes_with_the_rule_judge():
    rewards = compute_rewards([EPISODE_A, EPISODE_B, EPISODE_C], RuleJudge())
    for name, reward in zip("ABC", rewards, strict=True):
        got = reward.as_dict()
        assert set(got) == set(EXPECTED[name])
        for key, want in EXPECTED[name].items():
            assert got[key] == pytest.approx(want, abs=EXACT), (name, key)


def test_weights_are_configurable():
    judge = RuleJudge()
    only = RewardConfig.answer_only()
    assert (only.w_task, only.w_context, only.w_memory) == (1 / 3, 0.0, 0.0)
    a, c = compute_rewards([EPISODE_A, EPISODE_C], judge, only)
    assert a.total == pytest.approx(1 / 3, abs=EXACT)
    assert c.total == pytest.approx(-1 / 3 - 1, abs=EXACT)  # penalties stay
    assert a.memory == pytest.approx(2 / 3, abs=EXACT)  # components are still logged

    cfg = {
        "w_task": 1.0,
        "w_context": 0.5,
        "w_memory": 0.25,
        "alpha_compression": 1.0,
        "alpha_preventive": 0.0,
        "alpha_preservation": 0.0,
        "beta_storage": 0.0,
        "beta_maintenance": 0.0,
        "beta_relevance": 1.0,
        "p_overflow": -2.0,
        "p_no_answer": -3.0,
        "p_rounds": -0.25,
    }
    a, b, c = compute_rewards([EPISODE_A, EPISODE_B, EPISODE_C], judge, cfg)
    assert a.total == pytest.approx(1.0 + 0.5 * 0.75 + 0.25 * 1.0, abs=EXACT)
    assert b.total == pytest.approx(0.5 + 0.0 + 0.25 * 0.5 - 2.0, abs=EXACT)
    assert c.total == pytest.approx(-3.0 + 0.5 * 0.25 + 0.0 - 0.25, abs=EXACT)
    assert c.no_answer == -3.0 and b.overflow_penalty == -2.0

    # The storage threshold decides what counts as high quality: B's third entry scores 1/2.
    strict = compute_reward(EPISODE_B, judge, {"storage_threshold": 0.6})
    assert strict.storage == pytest.approx(1 / 3, abs=EXACT)


def test_preventive_min_fill_pays_a_reduction_only_under_pressure():
    """Two episodes alike but for how full the context was when it was shortened."""
    judge = RuleJudge()
    early = dataclasses.replace(EPISODE_A, reduction_fill=0.2)  # 1.6k of 8k tokens
    late = dataclasses.replace(EPISODE_A, reduction_fill=0.7)
    gate = {"preventive_min_fill": 0.5}
    e, la = compute_rewards([early, late], judge, gate)
    assert (e.preventive, la.preventive) == (0.0, 1.0)
    assert la.total - e.total == pytest.approx(1 / 9, abs=EXACT)  # w_context * alpha_preventive
    # The spec as written (min fill 0) pays both; no reduction pays nothing at any gate.
    assert [r.preventive for r in compute_rewards([early, late], judge)] == [1.0, 1.0]
    assert compute_reward(EPISODE_B, judge, {"preventive_min_fill": 0.0}).preventive == 0.0
    with pytest.raises(ValueError, match=r"preventive_min_fill must be in \[0, 1\]"):
        RewardConfig(preventive_min_fill=1.5)
    with pytest.raises(ValueError, match=r"reduction_fill=0\.3"):
        dataclasses.replace(EPISODE_B, reduction_fill=0.3)  # B never reduced its context


def test_config_from_mappings():
    assert build(RewardConfig, None) == RewardConfig()
    assert RewardConfig().w_task == 1 / 3 and RewardConfig().p_overflow == -0.5
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['w_taks'\]"):
        build(RewardConfig, {"w_taks": 1.0})
    ml_collections = pytest.importorskip("ml_collections")
    cfg = ml_collections.ConfigDict({"w_context": 0.0, "w_memory": 0})
    assert build(RewardConfig, cfg) == RewardConfig.answer_only()


class SpyJudge(Judge):
    """Fixed scores per kind; records each batch it is asked for."""

    def __init__(self, scores):
        super().__init__()
        self.scores, self.batches = scores, []

    def score(self, requests):
        self.batches.append([r.kind for r in requests])
        return [self.scores[r.kind] for r in requests]


def test_one_judge_batch_for_many_episodes():
    judge = SpyJudge({"task": 0.25, "storage": 0.5, "relevance": 0.75, "memory": 0.0})
    rewards = compute_rewards([EPISODE_A, EPISODE_B, EPISODE_C], judge)
    assert judge.batches == [
        [
            "task",
            "storage",
            "storage",
            "relevance",
            "task",
            "storage",
            "storage",
            "storage",
            "relevance",
        ]
    ]
    assert [r.task for r in rewards] == [0.25, 0.25, -1.0]
    assert [r.relevance for r in rewards] == [0.75, 0.75, 0.0]
    assert compute_rewards([], judge) == []


def test_bad_judge_scores_and_facts_raise_clearly():
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        compute_reward(EPISODE_A, SpyJudge({"task": 1.5, "storage": 0.0, "relevance": 0.0}))
    with pytest.raises(TypeError, match="added_entries is a sequence of strings"):
        dataclasses.replace(EPISODE_A, added_entries="one string")
    with pytest.raises(ValueError, match="t_max must be positive"):
        dataclasses.replace(EPISODE_A, t_max=0)
    with pytest.raises(ValueError, match="rounds must be >= 0"):
        dataclasses.replace(EPISODE_A, rounds=-1)
    assert dataclasses.replace(EPISODE_A, added_entries=["x"]).added_entries == ("x",)


def test_episode_facts_serialize():
    row = EPISODE_B.to_json()
    assert row["answer"] == "the city of Paris" and row["added_entries"][2] == "Paris"
    assert isinstance(compute_reward(EPISODE_C, RuleJudge()), Reward)


# ---------------------------------------------------------------------------------------------
# Preservation.


def _kept(question: str, kept_text: str) -> float:
    return preservation(dataclasses.replace(EPISODE_A, question=question, kept_text=kept_text))


def test_preservation_directly_or_in_a_summary():
    q = "Who was born on 2 March 1972 in Rosario, Argentina?"
    assert _kept(q, "Pablo Aimar was born on 2 March 1972 in Rosario, Argentina.") == 1.0
    summary = "[summary] The user asks about someone from Rosario (Argentina), born 2 March 1972."
    assert _kept(q, summary) == 1.0
    assert _kept(q, "[summary] Someone from Rosario, Argentina, born in 1972.") == 0.0
    assert _kept(q, "Rosarios of Argentina, 2 March 1972") == 0.0  # whole words only
    assert _kept("what is a dance?", "") == 1.0  # nothing to keep


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        # The five shared-sample questions the old answer normalization could not match even
        # against themselves: dashes, ranges and slashes.
        ("Who won the 2014–15 Premier League?", "the 2014-15 Premier League season"),
        ("Which playwright lived 1564-1616?", "He lived from 1564 to 1616."),
        ("Which company, A/S, makes it?", "Maersk A/S is Danish."),
        ("What replaced the CD/DVD drive?", "The CD / DVD drive was dropped."),
    ],
)
def test_preservation_normalizes_dashes_ranges_and_slashes(query, kept):
    assert _kept(query, query) == 1.0
    assert _kept(query, kept) == 1.0
    assert _kept(query, "nothing of the sort") == 0.0


class ScriptedJudge(Judge):
    """Returns the given scores in order (None = a failed judgment), like an LLM judge would."""

    def __init__(self, scores):
        super().__init__()
        self.queue = list(scores)

    def score(self, requests):
        out, self.queue = self.queue[: len(requests)], self.queue[len(requests) :]
        return out


def test_failed_judge_scores_are_counted_never_zero():
    # EPISODE_A's requests: task, storage x2, relevance. Its judge-free parts: compression 3/4,
    # preventive 1, preservation 1 -> context 11/12; maintenance 0.
    # One storage entry failed: R_storage is over the judged one (0.9 >= 0.5) -> 1, not 1/2.
    (r,) = compute_rewards([EPISODE_A], ScriptedJudge([1.0, None, 0.9, 1.0]))
    assert r.judge_failures == 1
    assert r.storage == 1.0
    assert r.total == pytest.approx((1 + 11 / 12 + 2 / 3) / 3, abs=EXACT)

    # The task score failed: R_task is unknown, and so is the total (no silent 0 or -1).
    (r,) = compute_rewards([EPISODE_A], ScriptedJudge([None, 1.0, 1.0, 1.0]))
    assert r.judge_failures == 1 and math.isnan(r.task) and math.isnan(r.total)
    assert r.memory == pytest.approx(2 / 3, abs=EXACT)  # the memory part is still known

    # Every storage entry and the relevance failed: R_storage, R_relevance, R_memory unknown.
    (r,) = compute_rewards([EPISODE_A], ScriptedJudge([0.5, None, None, None]))
    assert r.judge_failures == 3
    assert math.isnan(r.storage) and math.isnan(r.relevance) and math.isnan(r.memory)
    assert math.isnan(r.total) and r.task == 0.5

    # A part the config weighs 0 cannot make the total unknown (answer-only ablation).
    (r,) = compute_rewards(
        [EPISODE_A], ScriptedJudge([0.5, None, None, None]), RewardConfig.answer_only()
    )
    assert r.total == pytest.approx(0.5 / 3, abs=EXACT) and r.judge_failures == 3

    # Failures are per episode in a shared batch.
    a, b = compute_rewards([EPISODE_A, EPISODE_A], ScriptedJudge([1, 1, 1, 1, 1, None, 1, 1]))
    assert (a.judge_failures, b.judge_failures) == (0, 1) and b.storage == 1.0
