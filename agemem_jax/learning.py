"""Did GRPO teach anything? Paired before/after comparisons of evaluations of one task set.

`experiments/learn.py` evaluates the SFT policy and each GRPO policy on the same held-out tasks
(greedy, same data seed), so every task gives a pair of scores. The effect of training is the
mean per-task difference, with a percentile bootstrap over tasks for its 95% interval. Pairing
removes the between-task spread, which at ~50 tasks is much larger than the effects we look
for. `experiments/learning_report.py` turns a learn workdir into Markdown and PNGs.

A learn workdir holds:
    sft/                      the cold-start SFT (sft/export is the SFT policy)
    grpo_<variant>/           one GRPO run per reward variant (metrics.jsonl, export/)
    eval_<policy>_<suite>/    an evaluation (eval/metrics.json, eval/trajectories.jsonl)
    learn.json                commands, git commit and wall time of every stage
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agemem_jax import tools as T
from agemem_jax.metrics_log import read_jsonl
from agemem_jax.results import TOOL_LABELS

# The reward variants a learning run trains: config overrides of the `reward` block.
VARIANTS: dict[str, dict[str, float]] = {
    "all_returns": {},  # the method's composite reward (spec weights)
    "answer_only": {"w_context": 0.0, "w_memory": 0.0},  # Table 4's Answer-Only ablation
}
REWARD_PARTS = ("task", "context", "compression", "preventive", "preservation", "memory",
                "storage", "maintenance", "relevance", "penalty")  # fmt: skip
# What each episode is scored on, in report order: (key, label).
HEADLINE = (("J", "J (task score)"), ("MQ", "MQ (memory quality)"), ("reward", "reward R(τ)"))


@dataclasses.dataclass(frozen=True)
class LearnConfig:
    """The learning run around SFT and GRPO: the `learn` config block (`configs/learn_cpu.py`)."""

    variants: str = "all_returns,answer_only"  # GRPO runs from the one SFT policy, by reward
    procedural_tasks: int = 48  # held-out procedural tasks, drawn with `procedural_seed`
    procedural_seed: int = 1000  # a data seed the training never uses (training: data.seed)
    hotpotqa_tasks: int = 60  # tasks of the shared HotpotQA dev sample; 0 skips this suite
    hotpotqa_path: str = ""  # a HotpotQA JSON file; "" = the shared sample
    bootstrap_samples: int = 10000  # resamples of the tasks for each 95% interval
    bootstrap_seed: int = 0
    # A finished learn workdir whose SFT policy and SFT evaluations this run reuses, so that
    # tries of other GRPO settings pair against the same SFT results ("" = run its own SFT).
    sft_from: str = ""

    def __post_init__(self):
        unknown = set(self.variant_names) - set(VARIANTS)
        if unknown or not self.variant_names:
            raise ValueError(
                f"learn.variants={self.variants!r}: a comma list of {', '.join(VARIANTS)}"
            )
        if self.procedural_tasks < 1 or self.hotpotqa_tasks < 0 or self.bootstrap_samples < 100:
            raise ValueError(
                "learn needs procedural_tasks >= 1, hotpotqa_tasks >= 0 and bootstrap_samples "
                f">= 100; got {self.procedural_tasks}, {self.hotpotqa_tasks}, "
                f"{self.bootstrap_samples}"
            )

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v.strip() for v in self.variants.split(",") if v.strip())


# --------------------------------------------------------------------------- per-task scores
def episode_row(traj: Mapping[str, Any]) -> dict[str, float]:
    """One evaluation episode (a `trajectories.jsonl` line) as the numbers the report pairs.

    The definitions are `episodes.summarize`'s: J is the judge's task score of an answered
    episode and 0 without an answer; a failed judge score is NaN (left out, counted). TN is the
    episode's mean prompt tokens per action.
    """
    reward = traj.get("reward")
    if not isinstance(reward, Mapping):
        raise ValueError(f"task {traj.get('task_id')!r}: the episode was never scored")
    row: dict[str, float] = {
        "J": _num(reward.get("task")) if traj.get("answer") is not None else 0.0,
        "MQ": _num(traj.get("memory_quality")),
        "reward": _num(reward.get("total")),
    }
    for part in REWARD_PARTS:
        row[f"r/{part}"] = _num(reward.get(part))
    steps = traj.get("steps") or []
    row["TN"] = float(np.mean([s["prompt_tokens"] for s in steps])) if steps else math.nan
    calls = Counter(c["name"] for s in steps for c in s.get("calls", []))
    for name in T.TOOL_NAMES:
        row[f"calls/{name}"] = float(calls[name])
    row["calls/total"] = float(sum(calls[name] for name in T.TOOL_NAMES))
    return row


def _num(x: Any) -> float:
    return float(x) if isinstance(x, int | float) and x is not None else math.nan


def per_task(eval_dir: str | Path) -> dict[str, dict[str, float]]:
    """task id -> its scores, from `<eval_dir>/trajectories.jsonl` (rollouts of a task are
    averaged). A missing or torn file is one clear error."""
    path = Path(eval_dir) / "trajectories.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation at {path}")
    try:
        episodes = read_jsonl(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON lines ({e})") from None
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    for t in episodes:
        rows[str(t["task_id"])].append(episode_row(t))
    return {task: {k: _nanmean([r[k] for r in rs]) for k in rs[0]} for task, rs in rows.items()}


def _nanmean(xs: Sequence[float]) -> float:
    known = [x for x in xs if not math.isnan(x)]
    return float(np.mean(known)) if known else math.nan


# --------------------------------------------------------------------------- paired deltas
@dataclasses.dataclass(frozen=True)
class Paired:
    """mean(after - before) over the tasks both scored, with a percentile-bootstrap 95% CI."""

    n: int
    before: float
    after: float
    delta: float
    lo: float
    hi: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.lo > 0 or self.hi < 0

    def text(self, digits: int = 3) -> str:
        if self.n == 0:
            return "—"
        f = f"{{:+.{digits}f}}"
        return f"{f.format(self.delta)} [{f.format(self.lo)}, {f.format(self.hi)}]"


def paired(
    before: Mapping[str, Mapping[str, float]],
    after: Mapping[str, Mapping[str, float]],
    key: str,
    *,
    samples: int = 10000,
    seed: int = 0,
) -> Paired:
    """The paired difference of `key` between two evaluations of the same tasks.

    Both must hold the same task ids (they come from one data seed); a task whose score is NaN
    in either is left out of this key's pairs.
    """
    if set(before) != set(after):
        only = sorted(set(before) ^ set(after))[:5]
        raise ValueError(
            f"the evaluations scored different tasks ({len(before)} vs {len(after)}; e.g. "
            f"{only}): pairing needs the same data seed and task count"
        )
    tasks = sorted(before)
    b = np.asarray([before[t][key] for t in tasks], np.float64)
    a = np.asarray([after[t][key] for t in tasks], np.float64)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    n = int(a.size)
    if n == 0:
        return Paired(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    d = a - b
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(samples, n))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Paired(n, float(b.mean()), float(a.mean()), float(d.mean()), float(lo), float(hi))


# --------------------------------------------------------------------------- the report
SUITES = {"procedural": "held-out procedural tasks", "hotpotqa": "HotpotQA (shared dev sample)"}
# Training-log series the diagnosis reads: (metrics.jsonl key, label).
DIAGNOSTICS = (
    ("reward_mean", "reward (mean over the step's rollouts)"),
    ("reward_group_std", "reward std within a group (the advantage signal)"),
    ("kl", "KL to the reference"),
    ("clip_fraction", "clipped token share"),
    ("entropy", "policy entropy (nats/token)"),
    ("format_error_rate", "format error rate"),
    ("judge_score", "J on the training rollouts"),
    ("memory_quality", "MQ on the training rollouts"),
    ("tool_calls_total", "tool calls per step"),
    ("decode_utilization", "decode utilization"),
)


def eval_dir(workdir: str | Path, policy: str, suite: str) -> Path:
    """Where `experiments/learn.py` evaluates `policy` (sft or a variant) on `suite`."""
    return Path(workdir) / f"eval_{policy}_{suite}"


def build_report(
    workdir: str | Path,
    out: str | Path,
    *,
    notes: str | Path | None = None,
    tries: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """`out` (Markdown) plus its PNGs in `<out without .md>/`, from a learn workdir.

    Returns the headline numbers. Evaluations that are missing (a run still under way) leave
    their cells out and are listed; a learn workdir with no SFT evaluation is an error.
    `notes`, a Markdown file, is included as the report's diagnosis section. The bootstrap
    settings are the run's (`learn` in learn.json). `tries` are learn workdirs started from
    this run's SFT policy (`learn.sft_from`): each of their GRPO policies is paired against
    this run's SFT evaluation, in a section of its own.
    """
    wd, out = Path(workdir), Path(out)
    meta = _read_json(wd / "learn.json") if (wd / "learn.json").is_file() else {}
    learn = LearnConfig(**meta.get("learn", {}))
    samples, seed = learn.bootstrap_samples, learn.bootstrap_seed
    variants = [v for v in VARIANTS if (wd / f"grpo_{v}").is_dir()]
    suites = [s for s in SUITES if (eval_dir(wd, "sft", s) / "eval").is_dir()]
    if not suites:
        raise FileNotFoundError(f"no SFT evaluation under {wd} (eval_sft_<suite>/eval)")
    scores: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    missing = []
    for suite in suites:
        for policy in ("sft", *variants):
            d = eval_dir(wd, policy, suite) / "eval"
            if (d / "trajectories.jsonl").is_file():
                scores[policy, suite] = per_task(d)
            else:
                missing.append(str(d.relative_to(wd)))

    tried = _read_tries(tries, suites, scores, missing)

    def pair(a: str, b: str, suite: str, key: str) -> Paired | None:
        if (a, suite) not in scores or (b, suite) not in scores:
            return None
        return paired(scores[a, suite], scores[b, suite], key, samples=samples, seed=seed)

    figs = out.with_suffix("")
    figs.mkdir(parents=True, exist_ok=True)
    logs = {v: read_jsonl(wd / f"grpo_{v}" / "metrics.jsonl", skip_torn=True) for v in variants}
    logs |= {t.label: t.log for t in tried}
    curve = _plot_curves(logs, figs / "reward_curve.png") if any(logs.values()) else None

    headline: dict[str, Any] = {}
    model = meta.get("model", "?")
    lines = [f"# Does step-wise GRPO learn? Paired held-out results, policy `{model}`", ""]
    lines += _provenance(meta)
    lines += ["## Headline", ""]
    lines += [
        "Paired per-task differences on held-out tasks (mean, 95% percentile-bootstrap interval "
        f"over tasks, {samples} resamples). Greedy evaluation; SFT is the policy GRPO starts from.",
        "",
        "| suite | tasks | ΔJ GRPO − SFT | ΔMQ GRPO − SFT | ΔMQ All-Returns − Answer-Only |",
        "|---|---|---|---|---|",
    ]
    for suite in suites:
        dj = pair("sft", "all_returns", suite, "J")
        dmq = pair("sft", "all_returns", suite, "MQ")
        dao = pair("answer_only", "all_returns", suite, "MQ")
        n = len(scores.get(("sft", suite), {}))
        lines.append(f"| {SUITES[suite]} | {n} | {_cell(dj)} | {_cell(dmq)} | {_cell(dao)} |")
        headline[suite] = {
            k: dataclasses.asdict(p) if p else None
            for k, p in (("dJ_grpo_sft", dj), ("dMQ_grpo_sft", dmq), ("dMQ_ar_ao", dao))
        }
    lines += ["", "GRPO = the All-Returns run. " + _verdict(headline), ""]

    for suite in suites:
        lines += [f"## {SUITES[suite]}", ""]
        lines += _suite_table(suite, variants, scores, pair)
        lines += ["", "Tool calls per episode:", ""]
        lines += _tool_table(suite, variants, scores)
        lines.append("")

    lines += ["## Training", ""]
    if curve:
        lines += [f"![reward curve]({figs.name}/{curve.name})", ""]
    lines += _training_table(logs)
    if tried:
        headline["tries"] = {}
        lines += ["", *_tries_section(tried, suites, scores, pair, headline["tries"])]
    if notes:
        lines += ["", "## Diagnosis", "", Path(notes).read_text().strip()]
    if missing:
        lines += ["", "Not yet evaluated: " + ", ".join(f"`{m}`" for m in missing) + "."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return {"report": str(out), "headline": headline, "missing": missing}


@dataclasses.dataclass(frozen=True)
class _Try:
    label: str  # "<workdir name>/<variant>", its key in the scores
    changes: tuple[str, ...]  # the try's --config overrides, learn.* left out
    commands: tuple[str, ...]
    commit: str
    grpo_seconds: float | None
    log: list[dict[str, Any]]


def _read_tries(tries, suites, scores, missing) -> list[_Try]:
    """Each try's GRPO policies, their evaluations added to `scores` under the try's label."""
    out = []
    for t in map(Path, tries):
        meta = _read_json(t / "learn.json") if (t / "learn.json").is_file() else None
        if meta is None or not meta.get("learn", {}).get("sft_from"):
            raise ValueError(f"try {t}: not a learn workdir started with learn.sft_from")
        commands = tuple(meta.get("commands", ()))
        changes = tuple(dict.fromkeys(
            a for c in commands for a in c.split()
            if a.startswith("--config.") and not a.startswith("--config.learn.")
        ))  # fmt: skip
        for v in VARIANTS:
            if not (t / f"grpo_{v}").is_dir():
                continue
            label = f"{t.name}/{v}"
            for suite in suites:
                if suite == "hotpotqa" and not meta["learn"].get("hotpotqa_tasks"):
                    continue  # the try left this suite out (learn.hotpotqa_tasks=0)
                d = eval_dir(t, v, suite) / "eval"
                if (d / "trajectories.jsonl").is_file():
                    scores[label, suite] = per_task(d)
                else:
                    missing.append(str(d))
            log = read_jsonl(t / f"grpo_{v}" / "metrics.jsonl", skip_torn=True)
            secs = meta.get("seconds", {}).get(f"grpo_{v}")
            out.append(_Try(label, changes, commands, meta.get("commit", "?"), secs, log))
    return out


def _tries_section(tried, suites, scores, pair, headline) -> list[str]:
    lines = ["## Tries from the same SFT policy", ""]
    lines += [
        "Each try is its own learn workdir, started with `--config.learn.sft_from` pointing at "
        "this run: GRPO from the same SFT policy with the settings below changed, evaluated "
        "greedily on the same tasks with the spec's reward and paired against the same SFT "
        "evaluation. Every try made is listed.",
        "",
        "| try | changed | GRPO wall time | suite | ΔJ − SFT | ΔMQ − SFT | Δreward − SFT |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tried:
        wall = "—" if t.grpo_seconds is None else f"{t.grpo_seconds / 60:.1f} min"
        changed = " ".join(f"`{c}`" for c in t.changes) or "(none)"
        headline[t.label] = {}
        for suite in suites:
            if (t.label, suite) not in scores:
                continue
            cells = {k: pair("sft", t.label, suite, k) for k in ("J", "MQ", "reward")}
            headline[t.label][suite] = {
                k: dataclasses.asdict(p) if p else None for k, p in cells.items()
            }
            lines.append(
                f"| {t.label} | {changed} | {wall} | {suite} | "
                + " | ".join(_cell(p) for p in cells.values())
                + " |"
            )
    for suite in suites:
        if not any((t.label, suite) in scores for t in tried):
            continue
        lines += ["", f"Tool calls per episode, {SUITES[suite]}:", ""]
        lines += _tool_table(suite, [t.label for t in tried], scores)
    lines += ["", "Commands (commit):", "", "```"]
    for t in tried:
        lines += [f"{c}  # {t.commit}" for c in t.commands]
    return [*lines, "```"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e})") from None


def _cell(p: Paired | None) -> str:
    return "—" if p is None else p.text()


def _verdict(headline: Mapping[str, Any]) -> str:
    """One sentence per headline number, from its interval alone (no hand-picked wording)."""
    out = []
    names = {"dJ_grpo_sft": "GRPO vs SFT in J", "dMQ_grpo_sft": "GRPO vs SFT in MQ",
             "dMQ_ar_ao": "All-Returns vs Answer-Only in MQ"}  # fmt: skip
    for suite, cells in headline.items():
        for key, p in cells.items():
            if p is None or not p["n"]:
                continue
            if p["lo"] > 0:
                word = "better, the interval excludes 0"
            elif p["hi"] < 0:
                word = "worse, the interval excludes 0"
            else:
                word = "no difference we can tell (the interval holds 0)"
            out.append(f"{names[key]} on {suite}: {word}.")
    return " ".join(out)


def _provenance(meta: Mapping[str, Any]) -> list[str]:
    if not meta:
        return ["(no learn.json: commands and wall times unknown)", ""]
    commits = meta.get("commits") or [meta.get("commit", "?")]
    lines = ["Commits (the stages ran under these, in order): "
             + ", ".join(f"`{c}`" for c in commits) + ". Commands:", "", "```"]  # fmt: skip
    lines += list(meta.get("commands", []))
    lines += ["```", "", "| stage | wall time |", "|---|---|"]
    for stage, src in meta.get("shared", {}).items():
        lines.append(f"| {stage} | shared: `{src}` |")
    for stage, s in meta.get("seconds", {}).items():
        lines.append(f"| {stage} | {s / 60:.1f} min |")
    total = sum(meta.get("seconds", {}).values())
    lines += [f"| total | {total / 3600:.2f} h |", ""]
    return lines


def _suite_table(suite, variants, scores, pair) -> list[str]:
    keys = [("J", "J"), ("MQ", "MQ"), ("reward", "reward"), ("TN", "TN (prompt tokens)")]
    keys += [(f"r/{p}", f"reward part: {p}") for p in REWARD_PARTS]
    head = "| metric | SFT |" + "".join(f" {v} | Δ {v} − SFT |" for v in variants)
    lines = [head, "|---|---|" + "---|---|" * len(variants)]
    for key, label in keys:
        base = scores.get(("sft", suite))
        row = f"| {label} | {_mean(base, key)} |"
        for v in variants:
            p = pair("sft", v, suite, key)
            row += f" {_mean(scores.get((v, suite)), key)} | {_cell(p)} |"
        lines.append(row)
    return lines


def _tool_table(suite, variants, scores) -> list[str]:
    names = ["SFT", *variants]
    lines = ["| tool | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for tool in (*T.TOOL_NAMES, "total"):
        label = TOOL_LABELS.get(tool, tool)
        cells = [_mean(scores.get((p, suite)), f"calls/{tool}") for p in ("sft", *variants)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _mean(rows: Mapping[str, Mapping[str, float]] | None, key: str) -> str:
    if not rows:
        return "—"
    m = _nanmean([r[key] for r in rows.values()])
    return "—" if math.isnan(m) else f"{m:.3f}"


def _training_table(logs: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """First and last fifth of each run's steps, per diagnostic: what moved."""
    runs = [v for v, rows in logs.items() if rows]
    if not runs:
        return ["No GRPO steps logged yet."]
    head = "| series |" + "".join(f" {v}: first → last |" for v in runs)
    lines = [head, "|---|" + "---|" * len(runs)]
    series = list(DIAGNOSTICS) + [(f"reward/{p}", f"reward part: {p}") for p in REWARD_PARTS]
    series += [(f"tool_calls/{t}", f"{TOOL_LABELS[t]} calls / episode") for t in T.TOOL_NAMES]
    for key, label in series:
        cells = []
        for v in runs:
            xs = [float(r[key]) for r in logs[v] if isinstance(r.get(key), int | float)]
            if not xs:
                cells.append("—")
                continue
            k = max(1, len(xs) // 5)
            cells.append(f"{np.mean(xs[:k]):.3g} → {np.mean(xs[-k:]):.3g}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    steps = {v: len(logs[v]) for v in runs}
    secs = {
        v: sum(r.get("rollout_seconds", 0) + r.get("update_seconds", 0) for r in logs[v])
        for v in runs
    }
    lines += ["", "Steps logged: " + ", ".join(
        f"{v} {steps[v]} ({secs[v] / 60:.0f} min of rollout + update)" for v in runs
    ) + ". First/last = mean over the first and last fifth of the steps."]  # fmt: skip
    return lines


def _plot_curves(logs: Mapping[str, list[dict[str, Any]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for v, rows in logs.items():
        if not rows:
            continue
        steps = np.asarray([r["step"] for r in rows])
        mean = np.asarray([r["reward_mean"] for r in rows], np.float64)
        std = np.asarray([r["reward_std"] for r in rows], np.float64)
        a.plot(steps, mean, label=v)
        a.fill_between(steps, mean - std, mean + std, alpha=0.2)
        b.plot(steps, [r["reward_group_std"] for r in rows], label=v)
    a.set(xlabel="GRPO step", ylabel="R(τ)", title="reward (± std over rollouts)")
    b.set(xlabel="GRPO step", ylabel="std", title="reward std within a group")
    a.legend()
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
