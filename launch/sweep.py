"""Expand a sweep definition into named runs and run them, or write their cluster commands.

    python launch/sweep.py --sweep=configs/sweeps/reward_x_tools.py:tiny --dir=runs/rxt
    python launch/sweep.py --sweep=... --dir=... --parallel=2       # two runs at a time
    python launch/sweep.py --sweep=... --dir=... --dry_run          # print the commands only
    python launch/sweep.py --sweep=... --dir=... --mode=slurm       # write an sbatch array
    python launch/sweep.py --sweep=... --dir=... --mode=tpu         # write a TPU-pod script

Re-running the same command resumes: a run whose metrics files mark every stage done is
skipped (training itself resumes from its last checkpoint). A run that fails is retried
`--retries` times (default once), then reported; the exit status is 1 if any run failed.
Each run's output goes to `<dir>/<run>/run.log`; `<dir>/sweep.json` lists the runs.
"""

from __future__ import annotations

import concurrent.futures
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from absl import flags

from agemem_jax import cli, sweeps
from agemem_jax.config_lib import ROOT
from agemem_jax.metrics_log import read_jsonl

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep definition file[:arg] with get_sweep().")
_DIR = flags.DEFINE_string("dir", None, "Sweep directory: one workdir per run under it.")
_MODE = flags.DEFINE_enum("mode", "local", ["local", "slurm", "tpu"], "Where the runs go.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Local runs at a time.")
_RETRIES = flags.DEFINE_integer("retries", 1, "Local retries of a failed run before reporting it.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print each run's commands; run nothing.")
_NICE = flags.DEFINE_integer("nice", 0, "Local runs start under `nice -n` this (0: not niced).")
_PYTHON = flags.DEFINE_string("python", sys.executable, "The interpreter the runs use.")
_ONLY = flags.DEFINE_string("only", "", "Run only runs whose name contains this.")
flags.mark_flags_as_required(["sweep", "dir"])


def _write_meta(sweep_name: str, runs: list[sweeps.Run], root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for r in runs:
        Path(r.workdir).mkdir(parents=True, exist_ok=True)
        (Path(r.workdir) / "run.json").write_text(json.dumps(r.to_json(sweep_name), indent=2))
    index = {"sweep": sweep_name, "runs": [r.to_json(sweep_name) for r in runs]}
    (root / "sweep.json").write_text(json.dumps(index, indent=2))


def _run_local(run: sweeps.Run, retries: int, nice: int) -> tuple[str, float, str]:
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
                rc = subprocess.run(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
            if rc != 0 or not stage.done():
                failed = f"{stage.kind} exit {rc}" if rc else f"{stage.kind} left no metrics"
                break
        if failed is None:
            return ("done" if attempt == 0 else "done (retried)"), time.time() - t0, note
        note = failed
    return "failed", time.time() - t0, f"{note}; see {log}"


def _metrics(run: sweeps.Run) -> dict[str, str]:
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


def _table(rows: list[dict[str, str]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    widths = {c: max(len(c), *(len(r.get(c, "—")) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(r.get(c, "—").ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _slurm(runs: list[sweeps.Run], root: Path) -> Path:
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
        f"cd {shlex.quote(str(ROOT))}",
        'case "$SLURM_ARRAY_TASK_ID" in',
    ]
    for i, r in enumerate(runs):
        lines.append(f"  {i})  # {r.name}")
        lines += [f"    {_guarded(s)}" for s in r.stages]
        lines.append("    ;;")
    lines += ['  *) echo "no run $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac"]
    path = root / "slurm_array.sbatch"
    path.write_text("\n".join(lines) + "\n")
    return path


def _guarded(stage: sweeps.Stage) -> str:
    """The stage's command, skipped when its metrics file exists (eval), resumed (train)."""
    if stage.kind == "eval":
        return f"test -f {shlex.quote(stage.done_file)} || {stage.shell()}"
    return stage.shell()  # training resumes from its checkpoint and stops at its last step


def _tpu(runs: list[sweeps.Run], root: Path) -> Path:
    """One pod runs one job at a time: the runs one after another through launch/tpu_pod.sh."""
    lines = [
        "#!/usr/bin/env bash",
        f"# {len(runs)} runs on one pod slice: TPU_NAME=... ZONE=... bash {root / 'tpu_pod.sh'}",
        "# (run `launch/tpu_pod.sh $TPU_NAME $ZONE setup` once first; --dir must be on GCS)",
        "set -euo pipefail",
        f"cd {shlex.quote(str(ROOT))}",
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


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    spec_path, _, arg = cli.required(_SWEEP).partition(":")
    definition = sweeps.load(spec_path, arg or None)
    root = Path(cli.required(_DIR)).absolute()
    if _PARALLEL.value < 1 or _RETRIES.value < 0:
        raise ValueError("--parallel must be >= 1 and --retries >= 0")
    runs = sweeps.expand(definition, root, _PYTHON.value)
    if _ONLY.value:
        runs = [r for r in runs if _ONLY.value in r.name]
    print(f"sweep {definition.name}: {len(runs)} runs under {root}")
    if _DRY_RUN.value:
        for r in runs:
            print(f"# {r.name}" + ("  (done)" if r.done() else ""))
            for s in r.stages:
                print(s.shell())
        return
    _write_meta(definition.name, runs, root)
    if _MODE.value != "local":
        path = (_slurm if _MODE.value == "slurm" else _tpu)(runs, root)
        print(f"wrote {path}")
        print(path.read_text().splitlines()[1].lstrip("# "))
        return
    results: dict[str, tuple[str, float, str]] = {}
    todo = []
    for r in runs:
        if r.done():
            results[r.name] = ("skipped (done)", 0.0, "")
        else:
            todo.append(r)
    with concurrent.futures.ThreadPoolExecutor(_PARALLEL.value) as pool:
        futures = {pool.submit(_run_local, r, _RETRIES.value, _NICE.value): r for r in todo}
        for fut in concurrent.futures.as_completed(futures):
            r = futures[fut]
            results[r.name] = fut.result()
            print(f"{r.name}: {results[r.name][0]} ({results[r.name][1]:.0f}s)", flush=True)
    rows = []
    for r in runs:
        status, seconds, note = results[r.name]
        row = {"run": r.name, "status": status, "seconds": f"{seconds:.0f}"}
        row |= _metrics(r)
        if note:
            row["note"] = note
        rows.append(row)
    print(_table(rows))
    failed = [r for r, (s, _, _) in results.items() if s == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
