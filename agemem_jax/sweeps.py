"""Sweeps: a grid of config overrides expanded into named runs, each with its own workdir.

A sweep definition is a Python file whose `get_sweep(arg)` returns a `Sweep` (see
`configs/sweeps/`). Its points are built from axes:

    sweep("grpo.group_size", [4, 8], axis="K")      # one axis: a config path and its values
    product(reward_variants(), tool_ablations())      # every combination
    chain(a, b)                                       # a's points, then b's

Each point carries the overrides it sets and the tags that name it (`axis=value`), so a run's
workdir reads as what it varies: `reward-answer_only.method-agemem_lt`. A run is a chain of
stages: GRPO training (`experiments/train.py`) then evaluation (`experiments/eval.py`) of the
exported policy, or either alone. A stage is done when its metrics file says so, which is what
makes a sweep resumable. `launch/sweep.py` runs them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agemem_jax import config_lib, methods
from agemem_jax.metrics_log import read_jsonl

TRAIN_ENTRY = "experiments/train.py"
EVAL_ENTRY = "experiments/eval.py"


@dataclasses.dataclass(frozen=True)
class Point:
    """One point of a grid: the overrides it sets and the `(axis, value)` tags naming it.

    `train_config`/`eval_config` replace the sweep's config files (a benchmark axis changes the
    evaluation config, not just a value in it).
    """

    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tags: tuple[tuple[str, str], ...] = ()
    train_config: str | None = None
    eval_config: str | None = None

    def merge(self, other: Point) -> Point:
        clash = set(self.overrides) & set(other.overrides)
        if clash:
            raise ValueError(f"two axes of a product set the same keys: {sorted(clash)}")
        return Point(
            {**self.overrides, **other.overrides},
            self.tags + other.tags,
            other.train_config or self.train_config,
            other.eval_config or self.eval_config,
        )


def _readable(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return "+".join(_readable(v) for v in value) or "none"
    return str(value)


def sweep(
    key: str, values: Sequence[Any], axis: str | None = None, names: Sequence[str] | None = None
) -> list[Point]:
    """One axis: `key` (a config path such as `grpo.loss.kl_beta`) takes each of `values`."""
    if names is not None and len(names) != len(values):
        raise ValueError(f"sweep {key}: {len(names)} names for {len(values)} values")
    axis = axis or key.rsplit(".", 1)[-1]
    labels = names or [_readable(v) for v in values]
    return [Point({key: v}, ((axis, n),)) for v, n in zip(values, labels, strict=True)]


def product(*axes: Sequence[Point]) -> list[Point]:
    """Every combination of one point per axis (the first axis varies slowest)."""
    out = []
    for combo in itertools.product(*axes):
        p = Point()
        for q in combo:
            p = p.merge(q)
        out.append(p)
    return out


def chain(*axes: Sequence[Point]) -> list[Point]:
    return [p for axis in axes for p in axis]


# --------------------------------------------------------------------------- the paper's axes
# Reward settings by name: the spec's ablation (section 8) compares these two.
REWARD_VARIANTS: dict[str, dict[str, float]] = {
    "answer_only": {"reward.w_task": 1.0, "reward.w_context": 0.0, "reward.w_memory": 0.0},
    "all_returns": {"reward.w_task": 1 / 3, "reward.w_context": 1 / 3, "reward.w_memory": 1 / 3},
}
# Tool ablations (spec section 8) are methods of the shared harness (methods.py).
TOOL_ABLATIONS = {"full": "agemem", "lt_only": "agemem_lt", "lt_rag": "agemem_rag"}


def reward_variants(names: Iterable[str] = ("answer_only", "all_returns")) -> list[Point]:
    """Answer-Only (R_task alone) vs All-Returns (the three weights at 1/3)."""
    out = []
    for n in names:
        if n not in REWARD_VARIANTS:
            raise ValueError(f"unknown reward variant {n!r}; choose from {list(REWARD_VARIANTS)}")
        out.append(Point(REWARD_VARIANTS[n], (("reward", n),)))
    return out


def reward_weights(
    w_task: Sequence[float] = (1 / 3,),
    w_context: Sequence[float] = (1 / 3,),
    w_memory: Sequence[float] = (1 / 3,),
) -> list[Point]:
    """The product of the three reward weights."""
    return product(
        sweep("reward.w_task", w_task, "wt"),
        sweep("reward.w_context", w_context, "wc"),
        sweep("reward.w_memory", w_memory, "wm"),
    )


def tool_ablations(names: Iterable[str] = tuple(TOOL_ABLATIONS)) -> list[Point]:
    """full (all six tools), lt_only (+LT: LTM tools, RAG for STM), lt_rag (AgeMem-RAG)."""
    names = list(names)
    unknown = set(names) - set(TOOL_ABLATIONS)
    if unknown:
        raise ValueError(f"unknown tool ablations {sorted(unknown)}; choose from {TOOL_ABLATIONS}")
    return sweep("method", [TOOL_ABLATIONS[n] for n in names], "tools", names)


def method_axis(names: Iterable[str]) -> list[Point]:
    names = list(names)
    for n in names:
        methods.method_spec(n)
    return sweep("method", names)


def benchmark_axis(names: Iterable[str], preset: str) -> list[Point]:
    """Each benchmark's evaluation config (`configs/eval/<bench>.py:<preset>`)."""
    return [Point(tags=(("bench", b),), eval_config=f"configs/eval/{b}.py:{preset}") for b in names]


def group_sizes(ks: Sequence[int]) -> list[Point]:
    return sweep("grpo.group_size", ks, "K")


def kl_betas(betas: Sequence[float]) -> list[Point]:
    return sweep("grpo.loss.kl_beta", betas, "beta")


# --------------------------------------------------------------------------- runs
@dataclasses.dataclass(frozen=True)
class Sweep:
    """A sweep definition: what `get_sweep()` returns.

    train / eval: `path:preset` of the config each stage starts from; an empty one skips that
    stage (a sweep of prompted baselines has no training). base / train_base / eval_base:
    overrides for every run (both stages / training only / evaluation only). points: the grid.
    After training, evaluation loads the exported policy (`workdir/export`).
    """

    name: str
    points: Sequence[Point]
    train: str = ""
    eval: str = ""
    base: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train_base: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    eval_base: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not (self.train or self.eval) and not any(
            p.train_config or p.eval_config for p in self.points
        ):
            raise ValueError(f"sweep {self.name!r} has neither a train nor an eval config")
        if not self.points:
            raise ValueError(f"sweep {self.name!r} has no points")


@dataclasses.dataclass(frozen=True)
class Stage:
    kind: str  # "train" | "eval"
    argv: tuple[str, ...]  # the command, relative to the project root
    done_file: str  # the metrics file whose content marks the stage done
    steps: int = 0  # train: the step count that marks it done

    def done(self) -> bool:
        path = Path(self.done_file)
        if self.kind == "eval":
            return path.is_file()
        rows = read_jsonl(path)
        return bool(rows) and max(int(r.get("step", 0)) for r in rows) >= self.steps

    def shell(self) -> str:
        return shlex.join(self.argv)


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    workdir: str
    tags: tuple[tuple[str, str], ...]
    overrides: Mapping[str, Any]
    stages: tuple[Stage, ...]

    def done(self) -> bool:
        return all(s.done() for s in self.stages)

    def to_json(self, sweep_name: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "sweep": sweep_name,
            "tags": dict(self.tags),
            "overrides": {k: _jsonable(v) for k, v in self.overrides.items()},
            "commands": [s.shell() for s in self.stages],
        }


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def run_name(tags: Sequence[tuple[str, str]]) -> str:
    """A readable directory name from the tags: `reward-answer_only.tools-lt_only`."""
    text = ".".join(f"{a}-{v}" for a, v in tags) or "run"
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text)


def flag_value(value: Any) -> str:
    """A value as `--config.<key>=` parses it for its field type."""
    if isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "(" + ",".join(json.dumps(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _flags(overrides: Mapping[str, Any]) -> list[str]:
    return [f"--config.{k}={flag_value(v)}" for k, v in overrides.items()]


def _check(config_arg: str, overrides: Mapping[str, Any], what: str) -> Any:
    """The stage's ml_collections config (Any: its attributes are dynamic) with the overrides
    applied. An unknown key or a value of the wrong type fails here, before anything runs,
    with the run and the key named."""
    path, _, preset = config_arg.partition(":")
    cfg = config_lib.from_file(path, preset or None)
    for key, value in overrides.items():
        node, *parents = key.split(".")[::-1]
        holder: Any = cfg
        for part in reversed(parents):
            if part not in holder:
                raise ValueError(f"{what}: no config key {key!r} in {config_arg}")
            holder = holder[part]
        if node not in holder:
            raise ValueError(f"{what}: no config key {key!r} in {config_arg}")
        try:
            holder[node] = value
        except TypeError as e:
            raise ValueError(f"{what}: {key}={value!r}: {e}") from e
    return cfg


# Blocks that only training reads: kept out of the evaluation command (eval configs lack them).
TRAIN_ONLY = frozenset(config_lib.GRPO_BLOCKS)


def expand(sweep_def: Sweep, root: str | Path, python: str = sys.executable) -> list[Run]:
    """The sweep's runs, in grid order, each with its stages' commands; configs are checked."""
    runs: list[Run] = []
    seen: set[str] = set()
    for point in sweep_def.points:
        name = run_name(point.tags)
        if name in seen:
            raise ValueError(f"two points of sweep {sweep_def.name!r} are both named {name!r}")
        seen.add(name)
        workdir = str(Path(root) / name)
        overrides = {**sweep_def.base, **point.overrides}
        stages = []
        train_cfg = point.train_config or sweep_def.train
        eval_cfg = point.eval_config or sweep_def.eval
        if train_cfg:
            over = {**overrides, **sweep_def.train_base}
            if eval_cfg:
                over["train.export"] = True  # evaluation loads the exported policy
            cfg = _check(train_cfg, over, f"run {name} (train)")
            methods.require_trainable(cfg.method)
            argv = (python, TRAIN_ENTRY, f"--config={train_cfg}", f"--workdir={workdir}")
            stages.append(
                Stage("train", argv + tuple(_flags(over)), f"{workdir}/metrics.jsonl",
                      int(cfg.train.steps))
            )  # fmt: skip
        if eval_cfg:
            over = {k: v for k, v in overrides.items() if k.split(".")[0] not in TRAIN_ONLY}
            over |= sweep_def.eval_base
            if train_cfg:
                over |= {"model.checkpoint": f"{workdir}/export", "model.random": ""}
            _check(eval_cfg, over, f"run {name} (eval)")
            argv = (python, EVAL_ENTRY, f"--config={eval_cfg}", f"--workdir={workdir}")
            stages.append(Stage("eval", argv + tuple(_flags(over)), f"{workdir}/eval/metrics.json"))
        runs.append(Run(name, workdir, point.tags, overrides, tuple(stages)))
    return runs


def load(path: str | Path, arg: str | None = None) -> Sweep:
    """`get_sweep(arg)` of a sweep definition file (relative paths from the project root)."""
    module = config_lib.load_python(path, "sweep definition")
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{path} defines no get_sweep()")
    out = module.get_sweep(arg) if arg is not None else module.get_sweep()
    if not isinstance(out, Sweep):
        raise ValueError(f"{path}: get_sweep() returned {type(out).__name__}, not a Sweep")
    return out


# --------------------------------------------------------------------------- launching
def write_meta(sweep_name: str, runs: list[Run], root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for r in runs:
        Path(r.workdir).mkdir(parents=True, exist_ok=True)
        (Path(r.workdir) / "run.json").write_text(json.dumps(r.to_json(sweep_name), indent=2))
    index = {"sweep": sweep_name, "runs": [r.to_json(sweep_name) for r in runs]}
    (root / "sweep.json").write_text(json.dumps(index, indent=2))


def run_local(run: Run, retries: int, nice: int) -> tuple[str, float, str]:
    """(status, seconds, note): runs the stages not yet done; retries the chain on failure."""
    t0 = time.time()
    log = Path(run.workdir) / "run.log"
    note = ""
    for attempt in range(retries + 1):
        failed = None
        for stage in run.stages:
            if stage.done():
                continue
            argv = list(stage.argv)
            if nice:
                argv = ["nice", "-n", str(nice), *argv]
            with open(log, "a") as f:
                f.write(f"\n$ {shlex.join(argv)}  # attempt {attempt + 1}\n")
                f.flush()
                rc = subprocess.run(
                    argv, cwd=config_lib.ROOT, stdout=f, stderr=subprocess.STDOUT
                ).returncode
            if rc != 0 or not stage.done():
                failed = f"{stage.kind} exit {rc}" if rc else f"{stage.kind} left no metrics"
                break
        if failed is None:
            return ("done" if attempt == 0 else "done (retried)"), time.time() - t0, note
        note = failed
    return "failed", time.time() - t0, f"{note}; see {log}"


def summary_numbers(run: Run) -> dict[str, str]:
    """A few numbers for the summary table, from the run's metrics files."""
    out = {}
    ev = Path(run.workdir) / "eval" / "metrics.json"
    if ev.is_file():
        m = json.loads(ev.read_text())
        for key, label in (("judge_score", "J"), ("memory_quality", "MQ"), ("tool_calls", "TC"),
                           ("prompt_tokens", "TN"), ("success_rate", "SR"),
                           ("progress_rate", "PR")):  # fmt: skip
            if isinstance(m.get(key), int | float):
                out[label] = f"{m[key]:.3g}"
    rows = read_jsonl(Path(run.workdir) / "metrics.jsonl")
    if rows:
        out["reward(last step)"] = f"{rows[-1].get('reward_mean', float('nan')):.3g}"
    return out


def format_table(rows: list[dict[str, str]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    widths = {c: max(len(c), *(len(r.get(c, "—")) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(r.get(c, "—").ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def slurm_script(runs: list[Run], root: Path) -> Path:
    """An sbatch array script: task i runs run i's stages unless its metrics mark them done."""
    lines = [
        "#!/usr/bin/env bash",
        f"# {len(runs)} runs: sbatch --array=0-{len(runs) - 1} {root / 'slurm_array.sbatch'}",
        "#SBATCH --job-name=agemem-sweep",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --output=%x-%A_%a.out",
        "set -euo pipefail",
        f"cd {shlex.quote(str(config_lib.ROOT))}",
        'case "$SLURM_ARRAY_TASK_ID" in',
    ]
    for i, r in enumerate(runs):
        lines.append(f"  {i})  # {r.name}")
        lines += [f"    {guarded(s)}" for s in r.stages]
        lines.append("    ;;")
    lines += ['  *) echo "no run $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac"]
    path = root / "slurm_array.sbatch"
    path.write_text("\n".join(lines) + "\n")
    return path


def guarded(stage: Stage) -> str:
    """The stage's command, skipped when its metrics file exists (eval), resumed (train)."""
    if stage.kind == "eval":
        return f"test -f {shlex.quote(stage.done_file)} || {stage.shell()}"
    return stage.shell()  # training resumes from its checkpoint and stops at its last step


def tpu_script(runs: list[Run], root: Path) -> Path:
    """One pod runs one job at a time: the runs one after another through launch/tpu_pod.sh."""
    lines = [
        "#!/usr/bin/env bash",
        f"# {len(runs)} runs on one pod slice: TPU_NAME=... ZONE=... bash {root / 'tpu_pod.sh'}",
        "# (run `launch/tpu_pod.sh $TPU_NAME $ZONE setup` once first; --dir must be on GCS)",
        "set -euo pipefail",
        f"cd {shlex.quote(str(config_lib.ROOT))}",
        ': "${TPU_NAME:?}" "${ZONE:?}"',
    ]
    for r in runs:
        lines.append(f"# {r.name}")
        for s in r.stages:
            entry_and_flags = shlex.join(s.argv[1:])  # the pod uses its own .venv python
            lines.append(f'launch/tpu_pod.sh "$TPU_NAME" "$ZONE" run {entry_and_flags}')
    path = root / "tpu_pod.sh"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def launch(
    definition: Sweep,
    root: str | Path,
    *,
    mode: str = "local",
    parallel: int = 1,
    retries: int = 1,
    nice: int = 0,
    dry_run: bool = False,
    only: str = "",
    python: str = sys.executable,
    echo: Callable[[str], None] = print,
) -> int:
    """Expand and run (or print, or script) a sweep; returns the exit status (1: a run failed).

    Local runs go `parallel` at a time; a run whose metrics mark it done is skipped; a failed
    run is retried `retries` times, then reported. `mode` "slurm"/"tpu" writes the cluster
    script instead. Ends with a summary table.
    """
    if parallel < 1 or retries < 0:
        raise ValueError("parallel must be >= 1 and retries >= 0")
    if mode not in ("local", "slurm", "tpu"):
        raise ValueError(f"mode must be local, slurm or tpu, got {mode!r}")
    root = Path(root).absolute()
    runs = expand(definition, root, python)
    if only:
        runs = [r for r in runs if only in r.name]
    echo(f"sweep {definition.name}: {len(runs)} runs under {root}")
    if dry_run:
        for r in runs:
            echo(f"# {r.name}" + ("  (done)" if r.done() else ""))
            for s in r.stages:
                echo(s.shell())
        return 0
    write_meta(definition.name, runs, root)
    if mode != "local":
        path = (slurm_script if mode == "slurm" else tpu_script)(runs, root)
        echo(f"wrote {path}")
        echo(path.read_text().splitlines()[1].lstrip("# "))
        return 0
    results: dict[str, tuple[str, float, str]] = {}
    todo = []
    for r in runs:
        if r.done():
            results[r.name] = ("skipped (done)", 0.0, "")
        else:
            todo.append(r)
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        futures = {pool.submit(run_local, r, retries, nice): r for r in todo}
        for fut in concurrent.futures.as_completed(futures):
            r = futures[fut]
            results[r.name] = fut.result()
            echo(f"{r.name}: {results[r.name][0]} ({results[r.name][1]:.0f}s)")
    rows = []
    for r in runs:
        status, seconds, note = results[r.name]
        row = {"run": r.name, "status": status, "seconds": f"{seconds:.0f}"}
        row |= summary_numbers(r)
        if note:
            row["note"] = note
        rows.append(row)
    echo(format_table(rows))
    failed = [name for name, (status, _, _) in results.items() if status == "failed"]
    if failed:
        echo(f"{len(failed)} run(s) failed: {', '.join(failed)}")
        return 1
    return 0
