"""One source of truth: every setting is a dataclass field, a `--config.` flag, with one default."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import ml_collections as mlc
import pytest
from absl import flags
from ml_collections import config_flags

from agemem_jax import config_lib, dataclass_config
from agemem_jax.dataclass_config import build

ROOT = Path(__file__).resolve().parents[1]
PRESETS = (
    [("configs/hotpotqa.py", p) for p in ("synthetic_cpu", "hotpotqa_cpu", "smollm2_cpu")]
    + [
        ("configs/hotpotqa_grpo.py", p)
        for p in ("tiny_cpu", "smollm2_cpu", "qwen3_4b_tpu", "qwen25_7b_gpu")
    ]
    + [(f"configs/eval/{b}.py", "oracle") for b in ("alfworld", "sciworld", "babyai", "pddl")]
)


def _settings():
    """(block, dotted field path, field, type) of every setting of both root configs."""
    blocks = config_lib.BASE_BLOCKS | config_lib.GRPO_BLOCKS
    return [
        (name, path, f, tp)
        for name, cls in blocks.items()
        for path, f, tp in dataclass_config.walk(cls)
    ]


def _other_value(value, tp):
    """A flag-parsable value different from `value`, for a field of type `tp`."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return value + 0.25
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return ("a", "b")
    if value is None:  # an optional scalar: a placeholder of the field's type
        return 7 if int in getattr(tp, "__args__", ()) else "x"
    raise AssertionError(f"no test value for {value!r}")


def _flag_literal(value) -> str:
    return repr(value) if isinstance(value, tuple) else str(value)


def test_every_setting_is_a_flag_with_the_dataclass_default():
    config = config_lib.grpo_config()
    argv, expected = ["prog"], {}
    for block, path, f, tp in _settings():
        node = config[block]
        for part in path.split("."):
            node = node[part]
        # One default: the block holds exactly the dataclass's default (nothing re-states it).
        assert node == dataclass_config.default_of(f), f"{block}.{path}"
        new = _other_value(node, tp)
        argv.append(f"--config.{block}.{path}={_flag_literal(new)}")
        expected[f"{block}.{path}"] = new
    fv = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", config, flag_values=fv, sys_argv=argv)
    fv(argv)
    parsed = fv.config
    for key, new in expected.items():
        node = parsed
        for part in key.split("."):
            node = node[part]
        assert node == new, key
    assert len(expected) > 90  # every block is walked, nested ones included


def test_blocks_build_their_dataclasses_at_the_defaults():
    config = config_lib.grpo_config()
    for name, cls in config_lib.blocks_of(config).items():
        assert build(cls, config[name]) == cls(), name


@pytest.mark.parametrize(("path", "preset"), PRESETS)
def test_presets_build_every_block(path, preset):
    """A preset only changes what it names; the result passes every dataclass's validation."""
    config = config_lib.from_file(path, preset)
    base = config_lib.grpo_config() if "train" in config else config_lib.base_config()
    assert set(config.keys()) == set(base.keys()), "a preset added or dropped a block"
    for name, cls in config_lib.blocks_of(config).items():
        build(cls, config[name])
        assert set(config[name].keys()) == set(base[name].keys()), name


def test_unknown_settings_and_bad_values_are_one_clear_error():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['w_taks'\]"):
        build(config_lib.BASE_BLOCKS["reward"], {"w_taks": 1.0})
    config = config_lib.grpo_config()
    argv = ["prog", "--config.reward.w_taks=1.0"]
    with pytest.raises((flags.Error, AttributeError), match='Did you mean "w_task"'):
        fv = flags.FlagValues()
        config_flags.DEFINE_config_dict("config", config, flag_values=fv, sys_argv=argv)
        fv(argv)
    with pytest.raises(ValueError, match="remat_policy"):
        build(config_lib.BASE_BLOCKS["model"], config.model, remat_policy="sometimes")
    with pytest.raises(ValueError, match=r"model\.random"):
        build(config_lib.BASE_BLOCKS["model"], config.model, random="huge")


@dataclasses.dataclass(frozen=True)
class Inner:
    names: tuple[str, ...] = ("a",)
    cap: int | None = None


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)
    rate: float = 0.5


def test_nested_blocks_and_tuples_round_trip():
    blk = dataclass_config.block(Outer)
    assert isinstance(blk.inner, mlc.ConfigDict) and blk.inner.cap is None
    blk.inner.cap = 3  # a None default is a typed placeholder: settable, type-checked
    with pytest.raises(TypeError):
        blk.inner.cap = "three"
    built = build(Outer, {"inner": {"names": ["x", "y"], "cap": 3}})
    assert built == Outer(Inner(("x", "y"), 3))
    assert build(Outer, blk).inner.cap == 3


def test_print_config_shows_resolved_values_with_comments():
    out = subprocess.run(
        [sys.executable, "experiments/train.py", "--config=configs/hotpotqa_grpo.py:tiny_cpu",
         "--print_config", "--config.reward.w_task=0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "reward.w_task = 0.5" in "\n".join(lines)
    assert any(line.startswith("grpo.loss.kl_beta = 0.1  # β") for line in lines)
    assert any(line.startswith("model.random = 'tiny'  # ") for line in lines)
    n_settings = sum(1 for line in lines if " = " in line and not line.startswith("#"))
    assert n_settings >= len(_settings())
