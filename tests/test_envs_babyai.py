"""BabyAI text environment: egocentric rendering, compiled actions, subgoal progress, policies."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("minigrid")

import gymnasium

from agemem_jax import envs
from agemem_jax.envs import babyai
from agemem_jax.envs.babyai import BabyAIEnv


def make(level: str, seed: int, **kw) -> BabyAIEnv:
    env = envs.make("babyai", level=level, seed=seed, **kw)
    env.reset()
    return env


# ----- rendering -----
def test_rendering_golden():
    env = make("BabyAI-GoToLocal-v0", 0)
    assert env.mission == "go to the green ball"
    assert env.task.endswith("\nYour mission: go to the green ball.")
    assert env.observation == (
        "You see:\n"
        "- yellow key: 1 step ahead and 1 step to your left\n"
        "- grey ball 1: 1 step ahead and 1 step to your right\n"
        "- purple key: 2 steps ahead and 1 step to your left\n"
        "- green key 1: 2 steps ahead and 1 step to your right\n"
        "- green ball: 3 steps ahead\n"
        "- red box: 2 steps ahead and 2 steps to your right\n"
        "- green key 2: 4 steps ahead and 2 steps to your right\n"
        "- grey ball 2: 5 steps ahead and 1 step to your right\n"
        "Walls: 2 steps to your left.\n"
        "You are not carrying anything."
    )
    assert env.step("turn left").observation == (
        "You turn left.\n"
        "You see:\n"
        "- yellow key: 1 step ahead and 1 step to your right\n"
        "- green ball: 3 steps to your right\n"
        "- purple key: 1 step ahead and 2 steps to your right\n"
        "Walls: 2 steps ahead, 1 step to your left.\n"
        "You are not carrying anything."
    )
    door = make("BabyAI-OpenDoor-v0", 0)
    assert door.observation == (
        "You see:\n- closed red door: 1 step to your left\nWalls: 2 steps ahead.\n"
        "You are not carrying anything."
    )


def test_mission_comes_from_the_unwrapped_env():
    env = make("BabyAI-PutNextLocal-v0", 1)
    raw = gymnasium.make("BabyAI-PutNextLocal-v0").unwrapped
    raw.reset(seed=1)
    assert env.mission == raw.mission == "put the yellow key next to the purple box"


@pytest.mark.parametrize("level,seed", [("BabyAI-GoToLocal-v0", 0), ("BabyAI-UnlockPickup-v0", 2)])
def test_relative_positions_match_minigrid_view(level, seed):
    env = make(level, seed)
    for _ in range(4):
        size = env.env.agent_view_size
        for obj in env.visible_objects():
            vx, vy = env.env.get_view_coords(*obj.pos)
            assert (obj.ahead, obj.right) == (size - 1 - vy, vx - size // 2)
            cell = env.env.grid.get(*obj.pos)
            assert obj.name.split()[:2] == [cell.color, cell.type]
        env.step("turn right")


# ----- compiled actions -----
def test_go_to_and_pick_up_are_compiled_by_path_planning():
    env = make("BabyAI-GoToLocal-v0", 0)
    target = next(o for o in env.visible_objects() if o.name == "red box")
    env.step("go to the red box")
    assert tuple(env.env.front_pos) == target.pos and env.invalid_actions == 0
    assert "go to red box" not in env.admissible_actions()  # already there
    env.step("go to red box")
    assert tuple(env.env.front_pos) == target.pos and env.invalid_actions == 0
    env.step("pick up green key 2")
    assert env.env.carrying is not None and env.env.carrying.color == "green"
    assert env.invalid_actions == 0


def test_toggle_and_go_through_a_door():
    env = make("BabyAI-OpenTwoDoors-v0", 0)
    assert env.mission == "open the purple door, then open the red door"
    env.step("go to purple door")
    result = env.step("toggle")
    assert result.observation.startswith("You open the purple door.")
    door = next(o for o in env.visible_objects() if o.name == "purple door")
    before = np.array(env.env.agent_pos)
    env.step("go through purple door")
    after = np.array(env.env.agent_pos)
    assert env.invalid_actions == 0
    # Now one step past the door, on the opposite side from where the agent stood.
    assert np.abs(after - np.array(door.pos)).sum() == 1
    assert np.sign(after - door.pos).tolist() != np.sign(before - door.pos).tolist()


def test_invalid_actions_get_error_text_and_are_counted():
    env = make("BabyAI-GoToLocal-v0", 0)
    pos, d = tuple(env.env.agent_pos), env.env.agent_dir
    cases = {
        "": babyai.UNKNOWN,
        "dance": babyai.UNKNOWN,
        "go to the purple dragon": "There is no object called 'the purple dragon'. "
        "Name objects by colour and type.",
        "pick up blue ball": "You cannot see any blue ball from here.",
        "drop": "You cannot drop anything, as you are not carrying anything.",
        "toggle": "There is nothing to toggle in front of you.",
        "go through yellow key": "You cannot go through the yellow key, as it is not a door.",
    }
    for action, message in cases.items():
        assert env.step(action).observation == message, action
    assert env.invalid_actions == len(cases) and env.steps == len(cases)
    assert (tuple(env.env.agent_pos), env.env.agent_dir) == (pos, d)
    env.step("turn left")
    env.step("turn left")
    env.step("move forward")
    assert env.step("move forward").observation == (
        "You cannot move forward, as there is a wall in front of you."
    )


def test_admissible_actions_are_all_valid():
    env = make("BabyAI-PutNextLocal-v0", 1)
    actions = env.admissible_actions()
    assert actions[:3] == ["turn left", "turn right", "move forward"]
    assert "go to purple box" in actions and "pick up purple box" in actions
    for action in actions:
        probe = make("BabyAI-PutNextLocal-v0", 1)
        probe.step(action)
        assert probe.invalid_actions == 0, action


# ----- metrics -----
def test_subgoal_progress_and_success():
    env = make("BabyAI-PutNextLocal-v0", 1)
    assert env.progress == 0.0 and len(env._subgoals) == 2
    result = env.step("turn right")
    result = env.step("turn right")
    result = env.step("pick up yellow key")
    assert result.score == 0.5 and not result.done  # carrying the object to move
    env.step("turn right")
    env.step("move forward")
    result = env.step("drop")
    assert result.done and env.success and result.score == 1.0
    assert result.observation.startswith("You drop the yellow key. The mission is complete.")
    assert env.metrics()["success_rate"] == 1.0


def test_progress_counts_each_clause():
    env = make("BabyAI-OpenTwoDoors-v0", 0)
    assert len(env._subgoals) == 4  # (face, open) for each of the two doors
    env.step("go to purple door")
    assert env.progress == 0.25
    env.step("toggle")
    assert env.progress == 0.5 and not env.success


def test_step_limit_and_primitive_limit():
    env = make("BabyAI-GoToLocal-v0", 0, max_steps=2)
    env.step("turn left")
    assert env.step("turn left").done and env.steps == 2
    env = make("BabyAI-GoToLocal-v0", 0, primitive_step_limit=3)
    env.step("go to grey ball 2")  # more than three primitive moves away
    assert env.done and env.terminated and not env.success


def test_bad_construction_is_one_clear_error():
    with pytest.raises(ValueError, match="not a BabyAI level"):
        BabyAIEnv("MiniGrid-Empty-5x5-v0")
    with pytest.raises(ValueError, match="unknown BabyAI level"):
        BabyAIEnv("BabyAI-NoSuchLevel-v0")


# ----- policies -----
def default_suite_tasks():
    return envs.tasks("babyai", num_per_level=1, seed=3)  # one task per default level


def test_oracle_solves_the_default_suite():
    results = [
        envs.play(envs.make("babyai", **s), envs.oracle_policy) for s in default_suite_tasks()
    ]
    assert len(results) == 10
    assert sum(r["success"] for r in results) / len(results) >= 0.9
    assert all(r["invalid_actions"] == 0 and r["steps"] <= 30 for r in results)


def test_random_policy_scores_near_zero_and_never_crashes():
    results = [
        envs.play(envs.make("babyai", **s), envs.RandomPolicy(seed=i))
        for i, s in enumerate(default_suite_tasks())
    ]
    assert sum(r["success"] for r in results) / len(results) <= 0.1
    assert all(r["steps"] == 30 or r["success"] for r in results)
    assert sum(r["invalid_actions"] for r in results) > 0


def test_oracle_survives_a_bot_that_loops():
    """minigrid's bot never returns on this layout; the oracle must still end the episode."""
    spec = envs.tasks("babyai", levels=["BabyAI-UnlockToUnlock-v0"], num_per_level=5)[4]
    env = envs.make("babyai", **spec)
    start = time.monotonic()
    metrics = envs.play(env, envs.oracle_policy)
    assert metrics["steps"] <= 30 and time.monotonic() - start < 60
    assert env.oracle_restarts > 0
