"""PDDL environment: grounding, English rendering, progress rate, oracle and random policies."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pyperplan")

from agemem_jax import envs
from agemem_jax.envs import pddl
from agemem_jax.envs.base import CHECK_ACTIONS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pddl"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"AgentBoard PDDL data absent at {DATA}")

BLOCKS_SEED7 = """\
(define (problem blocks)
  (:domain blocksworld-4ops)
  (:objects b1 b2 b3 b4 b5)
  (:init
    (arm-empty)
    (on b1 b5)
    (on b3 b1)
    (on b2 b3)
    (on-table b5)
    (on-table b4)
    (clear b2)
    (clear b4))
  (:goal (and
      (on b3 b2)
      (on b1 b3))))
"""


def blocks_env(**kw) -> pddl.PddlEnv:
    env = envs.make("pddl", domain="blockworld", problem_pddl=BLOCKS_SEED7, **kw)
    env.reset()
    return env


# ----- generators and our domain files -----
def test_generator_is_seeded_and_golden():
    assert pddl.generate_problem("blockworld", 7) == BLOCKS_SEED7
    for d in pddl.DOMAINS:
        assert pddl.generate_problem(d, 3) == pddl.generate_problem(d, 3)
        assert len({pddl.generate_problem(d, s) for s in range(8)}) > 1


@pytest.mark.parametrize("domain", pddl.DOMAINS)
def test_generated_problems_ground_with_unsatisfied_goals(domain):
    for spec in envs.tasks("pddl", source="generated", domains=[domain], num_per_domain=5):
        env = envs.make("pddl", **spec)
        env.reset()
        assert env.goals and not env.success
        assert env.admissible_actions(), "every generated problem has a legal first action"


def test_domain_files_ship_as_package_data():
    for d in pddl.DOMAINS:
        path = pddl.shipped_domain_file(d)
        assert path.is_file() and "(define (domain" in path.read_text()
    with pytest.raises(ValueError, match="unknown PDDL domain"):
        pddl.shipped_domain_file("sokoban")


@needs_data
@pytest.mark.parametrize(
    "domain,problem",
    [("blockworld", "problem1"), ("gripper", "prob01"), ("tyreworld", "p01"), ("barman", "p01")],
)
def test_our_domains_ground_like_agentboards(domain, problem):
    """Our own domain files give exactly AgentBoard's grounded operators on its problems."""
    text = (DATA / domain / f"{problem}.pddl").read_text()
    ours, _, _, _ = pddl._ground(pddl.shipped_domain_file(domain).read_text(), text)
    theirs, _, _, _ = pddl._ground((DATA / domain / "domain.pddl").read_text(), text)

    def ops(task):
        return {(o.name, o.preconditions, o.add_effects, o.del_effects) for o in task.operators}

    assert ops(ours) == ops(theirs)
    assert ours.initial_state == theirs.initial_state and ours.goals == theirs.goals


def test_grounding_keeps_statics_and_irrelevant_operators():
    env = envs.make("pddl", domain="gripper", problem_pddl=pddl.generate_problem("gripper", 0))
    full, pruned, statics, _ = pddl._ground(env._domain_pddl, env._problem_pddl)
    assert {"room", "ball", "gripper"} <= statics
    assert any(a.startswith("(room ") for a in full.initial_state)  # statics stay in the state
    assert len(full.operators) >= len(pruned.operators)


# ----- rendering -----
def test_rendering_golden():
    env = blocks_env()
    assert env.observation == (
        "Initial state: b1 is on top of b5. b2 is clear. b2 is on top of b3. b3 is on top of b1. "
        "b4 is clear. b4 is on the table. b5 is on the table. the arm is empty."
    )
    assert env.task.splitlines()[-2] == (
        "The goal is to satisfy the following conditions: b1 is on top of b3, b3 is on top of b2."
    )
    assert env.admissible_actions() == ["pick up b4", "unstack b2 from b3"]
    obs = env.step("unstack b2 from b3").observation
    assert obs == (
        "b1 is on top of b5. b3 is clear. b3 is on top of b1. b4 is clear. b4 is on the table. "
        "b5 is on the table. the arm is holding b2."
    )


@needs_data
def test_agentboard_barman_rendering_golden():
    env = envs.make("pddl", **envs.tasks("pddl", domains=["barman"], num_per_domain=1)[0])
    env.reset()
    assert env.name == "barman/p01"
    assert "Facts that never change: " in env.task
    assert "the first ingredient of cocktail1 is ingredient1." in env.task
    assert "dispenser2 dispenses ingredient2." in env.task
    assert env.task.splitlines()[-3] == (
        "The goal is to satisfy the following conditions: shot1 contains cocktail1, "
        "shot2 contains ingredient2."
    )
    assert env.admissible_actions()[:3] == [
        "grasp shaker1 with left hand",
        "grasp shaker1 with right hand",
        "grasp shot1 with left hand",
    ]
    env.step("grasp shot1 with left hand")
    assert (
        "fill shot1 with ingredient1 from dispenser1 holding it in left hand with right hand "
        "free" in env.admissible_actions()
    )


def test_actions_in_english_or_pddl_form():
    for text in (
        "unstack b2 from b3",
        "Unstack b2 from the b3.",
        "(unstack b2 b3)",
        "unstack b2 b3",
    ):
        env = blocks_env()
        env.step(text)
        assert env.invalid_actions == 0 and "(holding b2)" in env.state, text


# ----- invalid actions and the step limit -----
def test_invalid_actions_are_counted_and_change_nothing():
    env = blocks_env()
    state = env.state
    for text in ("", "fly to the moon", "pick up b1", "stack b1 on b9", "unstack b2", "\x00\n"):
        result = env.step(text)
        assert not result.done and result.score == 0.0
        assert result.observation in (pddl.INVALID, pddl.UNKNOWN, env.empty_action_message)
    assert env.step("pick up b1").observation == pddl.INVALID  # known action, unmet precondition
    assert env.state == state and env.invalid_actions == 7 and env.steps == 7


def test_meta_actions_are_valid_steps():
    env = blocks_env()
    result = env.step(CHECK_ACTIONS[0])
    assert result.observation == "Valid actions are: pick up b4, unstack b2 from b3."
    assert env.step("look around").observation.startswith("Current state: b1 is on top of b5.")
    assert env.invalid_actions == 0 and env.steps == 2


def test_step_limit():
    env = blocks_env(max_steps=3)
    for _ in range(3):
        result = env.step("pick up b4")
    assert result.done and env.steps == 3
    after = env.step("put down b4")
    assert after.done and after.observation == "The episode is over." and env.steps == 3
    with pytest.raises(ValueError):
        blocks_env(max_steps=0)


def test_bad_construction_is_one_clear_error():
    with pytest.raises(ValueError, match="exactly one"):
        pddl.PddlEnv("blockworld")
    with pytest.raises(ValueError, match="cannot parse PDDL"):
        pddl.PddlEnv("blockworld", problem_pddl="(define (problem x) (:domain")
    with pytest.raises(ValueError, match="unknown PDDL task source"):
        envs.tasks("pddl", source="web")


# ----- progress rate -----
def test_progress_rate_is_running_max_of_goal_fraction():
    env = blocks_env()
    assert env.progress == 0.0  # the initial state is not scored
    plan = [
        "unstack b2 from b3",
        "put down b2",
        "unstack b3 from b1",
        "stack b3 on b2",
        "unstack b1 from b5",
        "stack b1 on b3",
    ]
    expected = [0.0, 0.0, 0.0, 0.5, 0.5, 1.0]
    for action, pr in zip(plan[:4], expected[:4], strict=True):
        assert env.step(action).score == pr
    # Undoing a satisfied goal atom lowers the current fraction but not the running max.
    env.step("unstack b3 from b2")
    assert env.goal_fraction(env.state) == 0.0 and env.progress == 0.5
    for action in ["stack b3 on b2", *plan[4:]]:
        result = env.step(action)
    assert result.done and env.success and result.score == 1.0
    assert result.observation.endswith("The goal is satisfied.")
    m = env.metrics()
    assert m["progress_rate"] == 1.0 and m["success"] == 1.0 and m["steps"] == 8


# ----- policies -----
def _rates(specs, policy_factory, max_steps=30):
    results = [
        envs.play(envs.make("pddl", max_steps=max_steps, **s), policy_factory()) for s in specs
    ]
    return results, sum(r["success"] for r in results) / len(results)


def test_oracle_and_random_on_generated_tasks():
    specs = envs.tasks("pddl", source="generated", num_per_domain=3, seed=5)[:10]
    results, sr = _rates(specs, lambda: envs.oracle_policy)
    assert sr >= 0.9
    assert all(r["invalid_actions"] == 0 for r in results)
    results, sr = _rates(specs, lambda: envs.RandomPolicy(seed=0))
    assert sr <= 0.1
    assert all(r["steps"] == 30 or r["success"] for r in results)
    assert sum(r["invalid_actions"] for r in results) > 0


@needs_data
def test_oracle_and_random_on_agentboard_tasks():
    specs = envs.tasks("pddl", domains=["blockworld"], num_per_domain=9)
    specs += envs.tasks("pddl", domains=["tyreworld"], num_per_domain=1)
    assert len(specs) == 10
    _, sr = _rates(specs, lambda: envs.oracle_policy)
    assert sr >= 0.9
    _, sr = _rates(specs, lambda: envs.RandomPolicy(seed=0))
    assert sr <= 0.1


def test_oracle_replans_after_a_detour():
    env = blocks_env()
    env.step(env.oracle_action())
    env.step("look around")
    env.step("put down b2" if "(holding b2)" in env.state else "pick up b4")
    while not env.done:
        env.step(env.oracle_action())
    assert env.success


@needs_data
def test_agentboard_task_list():
    specs = envs.tasks("pddl")
    assert len(specs) == 60
    assert [s["name"] for s in specs[:2]] == ["barman/p01", "barman/p02"]
    assert (
        specs[20]["name"] == "blockworld/problem1" and specs[29]["name"] == "blockworld/problem10"
    )
