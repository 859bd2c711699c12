"""ALFWorld: the offline game generator, the official-games layout and the text wrapper.

Every episode here runs on the real engine (TextWorld's PDDL backend through its gym API, with
ALFWorld's demangler). Generated games are written to a per-module temporary folder. The envs
extra (alfworld, textworld) must be installed: `make test` installs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agemem_jax.envs import alfworld as A
from agemem_jax.envs.base import RandomPolicy, oracle_policy, play

N_ORACLE = 10


@pytest.fixture(scope="module")
def game_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("alfworld_games")


@pytest.fixture(scope="module")
def files(game_dir) -> list[Path]:
    return A.task_files(num_tasks=N_ORACLE, seed=0, game_dir=game_dir)


def _data(path: Path) -> dict:
    return json.loads(path.read_text())


# ----- the generator -----


def test_generation_is_seeded_and_cycles_task_types(files, game_dir):
    assert [_data(f)["agemem"]["task_type"] for f in files[:6]] == list(A.TASK_TYPES)
    assert A.generate_game(0, 3) == A.generate_game(0, 3)
    assert A.generate_game(0, 3)["pddl_problem"] != A.generate_game(1, 3)["pddl_problem"]
    # Cached: asking again returns the same file without rewriting it.
    stamp = files[0].stat().st_mtime_ns
    assert A.generated_game_file(0, 0, game_dir=game_dir) == files[0]
    assert files[0].stat().st_mtime_ns == stamp
    data = _data(files[0])
    assert data["solvable"] and data["walkthrough"]
    assert data["pddl_domain"] == A.alfred().domain


def test_sampled_scenes_respect_alfred_affordances():
    """Objects sit only where ALFRED allows; the goal never holds at the start."""
    a, sc = A.alfred(), A.scenes()
    for index in range(120):
        task_type = A.TASK_TYPES[index % 6]
        spec = A.sample_spec(task_type, np.random.default_rng([7, index]))
        assert spec.room in sc["task_rooms"][task_type]
        kinds = dict(spec.receptacles)
        targets = [(o, r) for o, k, r in spec.objects if k == spec.target]
        for _, kind, rid in spec.objects:
            if kind == A.LAMP:
                assert kinds[rid] in sc["rooms"][spec.room]["lamp_hosts"]
            else:
                assert kind in a.contain[kinds[rid]], (kind, kinds[rid])
        assert len(targets) >= (2 if task_type == "pick_two_obj_and_place" else 1)
        if task_type == "look_at_obj_in_light":
            assert spec.parent is None and spec.toggle == A.LAMP
            assert any(k == A.LAMP for _, k, _ in spec.objects)
            continue
        assert spec.parent in kinds.values() and spec.target in a.contain[spec.parent]
        assert all(kinds[r] != spec.parent for _, r in targets)
        assert spec.parent not in sc.get("task_excluded_targets", {}).get(task_type, ())
        capability = {
            "pick_clean_then_place_in_recep": a.cleanable,
            "pick_heat_then_place_in_recep": a.heatable,
            "pick_cool_then_place_in_recep": a.coolable,
        }.get(task_type)
        assert capability is None or spec.target in capability


def test_names_follow_alfworld_demangler():
    spec = A.sample_spec("pick_clean_then_place_in_recep", np.random.default_rng([0, 2, 2]))
    names = A.display_names(spec)
    basin = next(r for r, k in spec.receptacles if k == "SinkBasin")
    assert names[basin] == "sinkbasin 1"
    cabinets = sorted(r for r, k in spec.receptacles if k == "Cabinet")
    # ALFWorld's demangler numbers sorted ids from the top down.
    assert [names[c] for c in cabinets] == [f"cabinet {len(cabinets) - i}" for i in range(3)]
    assert len(cabinets) == 3 and len(set(names.values())) == len(names)


# ----- golden renderings (seed 0) -----

GOLDEN = {
    0: (
        "You are in the middle of a room. Looking quickly around you, you see a bathtubbasin 1, "
        "a cabinet 2, a cabinet 1, a countertop 1, a drawer 1, a garbagecan 1, a sinkbasin 1, a "
        "toilet 1, and a toiletpaperhanger 1.\n\nYour task is to: put some tissuebox on "
        "garbagecan.",
        [
            (
                "go to countertop 1",
                "You arrive at countertop 1. On the countertop 1, you see a "
                "spraybottle 1, and a tissuebox 2.",
            ),
            (
                "take tissuebox 2 from countertop 1",
                "You pick up the tissuebox 2 from the countertop 1.",
            ),
            (
                "go to garbagecan 1",
                "You arrive at garbagecan 1. On the garbagecan 1, you see a toiletpaper 1.",
            ),
            ("move tissuebox 2 to garbagecan 1", "You move the tissuebox 2 to the garbagecan 1."),
        ],
    ),
    2: (
        "You are in the middle of a room. Looking quickly around you, you see a cabinet 3, a "
        "cabinet 2, a cabinet 1, a coffeemachine 1, a countertop 2, a countertop 1, a "
        "diningtable 1, a drawer 1, a fridge 1, a garbagecan 1, a microwave 1, a shelf 2, a "
        "shelf 1, a sinkbasin 1, a stoveburner 2, and a stoveburner 1.\n\nYour task is to: put "
        "a clean egg in diningtable.",
        [
            ("go to microwave 1", "You arrive at microwave 1. The microwave 1 is closed."),
            ("open microwave 1", None),
            ("take egg 3 from microwave 1", "You pick up the egg 3 from the microwave 1."),
            ("go to sinkbasin 1", None),
            ("clean egg 3 with sinkbasin 1", "You clean the egg 3 using the sinkbasin 1."),
            ("go to diningtable 1", None),
            ("move egg 3 to diningtable 1", "You move the egg 3 to the diningtable 1."),
        ],
    ),
}


@pytest.mark.parametrize("index", sorted(GOLDEN))
def test_golden_episode(files, index):
    first, steps = GOLDEN[index]
    with A.AlfWorldEnv(files[index]) as env:
        assert env.reset() == first
        assert env.task.startswith(f"Your task is to: {first.split('Your task is to: ')[1]}\n")
        for k, (command, text) in enumerate(steps):
            assert env.oracle_action() == command
            result = env.step(command)
            if text is not None:
                assert result.observation == text
            assert result.done == (k == len(steps) - 1) == env.success
        assert env.metrics() | {"benchmark": None} == {
            "benchmark": None,
            "success": 1.0,
            "progress": 1.0,
            "success_rate": 1.0,
            "steps": len(steps),
            "invalid_actions": 0,
        }


# ----- oracle and random policies -----


def test_oracle_solves_generated_tasks(files):
    results = []
    for path in files:
        with A.AlfWorldEnv(path) as env:
            results.append(play(env, oracle_policy))
    success = np.mean([r["success_rate"] for r in results])
    assert success >= 0.9, results
    assert all(r["invalid_actions"] == 0 for r in results)


def test_random_policy_scores_near_zero_and_never_crashes(files):
    results = []
    for i, path in enumerate(files[:6]):
        with A.AlfWorldEnv(path) as env:
            results.append(play(env, RandomPolicy(seed=i, junk_prob=0.3)))
    assert np.mean([r["success_rate"] for r in results]) <= 0.2
    for r in results:
        assert r["success"] == 1.0 or r["steps"] == 30
        assert r["invalid_actions"] > 0  # the junk was answered, not raised


# ----- the text interface -----


def test_invalid_actions_aliases_and_step_limit(files):
    with A.AlfWorldEnv(files[0], max_steps=5) as env:
        env.reset()
        assert env.step("fly to the moon").observation == "Nothing happens."
        assert env.invalid_actions == 1
        listed = env.step("check valid actions").observation
        assert listed.startswith("Valid actions are: ") and "go to countertop 1" in listed
        assert env.admissible_actions() == sorted(env.admissible_actions())
        env.step("Go to countertop 1.")
        env.step("take tissuebox 2 from countertop 1")
        # An older grammar's "put X in/on Y" is accepted for this grammar's "move X to Y".
        assert env.step("put tissuebox 2 on countertop 1").observation == (
            "You move the tissuebox 2 to the countertop 1."
        )
        assert env.invalid_actions == 1 and env.steps == 5 and env.done and not env.success
        metrics = env.metrics()
        assert (metrics["success_rate"], metrics["progress"], metrics["steps"]) == (0.0, 0.0, 5)
        assert env.step("look").observation == "The episode is over."
    with A.AlfWorldEnv(files[0], action_aliases=False) as env:
        env.reset()
        env.step("go to countertop 1")
        env.step("take tissuebox 2 from countertop 1")
        assert env.step("put tissuebox 2 on countertop 1").observation == "Nothing happens."


def test_oracle_walkthrough_survives_harmless_detours(files):
    """Looking around or talking nonsense between walkthrough steps does not derail the oracle."""
    with A.AlfWorldEnv(files[3], max_steps=100) as env:
        env.reset()
        while not env.done:
            for detour in ("look", "inventory", "dance", "check valid actions"):
                env.step(detour)
            env.step(env.oracle_action())
        assert env.success and env.invalid_actions == env.steps // 5


def test_reset_restarts_and_pool_reuses_engines(files):
    env = A.AlfWorldEnv(files[0])
    first = env.reset()
    env.step("go to countertop 1")
    assert env.reset() == first and env.steps == 0
    engine = env._gym
    env.close()
    other = A.AlfWorldEnv(files[1])
    assert other.reset().endswith("examine the keychain with the desklamp.")
    assert other._gym is engine  # the idle engine was handed over, not a new one made
    other.close()
    with pytest.raises(RuntimeError, match="reset"):
        A.AlfWorldEnv(files[0]).step("look")


def test_bad_settings_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="task types"):
        A.task_files(task_types=("pick_and_slice",))
    with pytest.raises(ValueError, match="source"):
        A.task_files(source="hub")
    with pytest.raises(ValueError, match="num_tasks"):
        A.task_files(num_tasks=0)
    with pytest.raises(A.AlfWorldError, match="alfworld-download"):
        A.task_files(source="official", data_path=tmp_path)
    with pytest.raises(A.AlfWorldError, match="no ALFWorld game file"):
        A.AlfWorldEnv(tmp_path / "missing.tw-pddl")
    with pytest.raises(ValueError, match="max_steps"):
        A.AlfWorldEnv(A.generated_game_file(0, 0, game_dir=tmp_path), max_steps=0)


# ----- official games -----


def _official_tree(root: Path, files: list[Path]) -> Path:
    """A miniature of the release layout, holding some of our generated games."""
    split = root / "json_2.1.1" / "valid_unseen"

    def put(task_dir: str, source: Path, **changes) -> None:
        trial = split / task_dir / "trial_T0"
        trial.mkdir(parents=True)
        (trial / "game.tw-pddl").write_text(json.dumps(_data(source) | changes))
        task_type = task_dir.split("-")[0]
        (trial / "traj_data.json").write_text(json.dumps({"task_type": task_type}))

    # A file without a walkthrough: the oracle must get one from TextWorld's planner.
    put("pick_and_place_simple-TissueBox-None-GarbageCan-401", files[0], walkthrough=None)
    put("look_at_obj_in_light-KeyChain-None-DeskLamp-301", files[1])
    put("pick_clean_then_place_in_recep-Egg-None-DiningTable-1", files[2])
    put("pick_and_place_with_movable_recep-Pen-Mug-Desk-301", files[0])
    put("pick_two_obj_and_place-Plate-None-Shelf-201", files[5], solvable=False)
    return root


def test_official_layout_is_found_filtered_and_played(files, tmp_path, monkeypatch):
    root = _official_tree(tmp_path / "alfworld", files)
    monkeypatch.setenv("ALFWORLD_DATA", str(root))
    found = A.task_files(source="official")  # found through $ALFWORLD_DATA
    assert [f.parent.parent.name.split("-")[0] for f in found] == [
        "look_at_obj_in_light",
        "pick_and_place_simple",
        "pick_clean_then_place_in_recep",
    ]
    only = A.task_files(source="official", task_types=("pick_and_place_simple",), data_path=root)
    assert only == [found[1]]
    specs = A.AlfWorldEnv.tasks(source="official", num_tasks=2)
    assert [s["name"] for s in specs] == [
        "alfworld/valid_unseen/look_at_obj_in_light-KeyChain-None-DeskLamp-301/trial_T0",
        "alfworld/valid_unseen/pick_and_place_simple-TissueBox-None-GarbageCan-401/trial_T0",
    ]
    envs = [A.AlfWorldEnv(**spec, max_steps=12) for spec in specs]
    assert _data(envs[1].game_file)["walkthrough"] is None
    for env in envs:
        with env:
            assert play(env, oracle_policy)["success_rate"] == 1.0


@pytest.mark.slow
def test_textworld_planner_solves_generated_games(tmp_path):
    """TextWorld's own planner also solves our games (minutes for pick-two scenes)."""
    for index in range(6):
        path = tmp_path / f"{index}.tw-pddl"
        path.write_text(json.dumps(A.generate_game(3, index) | {"walkthrough": None}))
        with A.AlfWorldEnv(path) as env:
            assert play(env, oracle_policy)["success_rate"] == 1.0


@pytest.mark.slow
def test_random_policy_on_many_tasks(tmp_path):
    results = []
    for i, path in enumerate(A.task_files(num_tasks=60, seed=1, game_dir=tmp_path)):
        with A.AlfWorldEnv(path) as env:
            results.append(play(env, RandomPolicy(seed=i, junk_prob=0.0)))
    assert np.mean([r["success_rate"] for r in results]) <= 0.1
