"""The paper's tables and figures from run directories (`experiments/report.py`).

A run is a workdir with `eval/metrics.json` (an evaluation) and/or `metrics.jsonl` (GRPO
training). What a run is comes from files it wrote: `run.json` (a sweep's name and tags),
`eval/config.json` and `config.json` (the resolved configs: method, benchmark, model, reward).

Each run becomes a row key (method, training, reward setting) on a backbone:
- training is `GRPO` when the evaluated policy is the export of a GRPO run (the workdir's own
  training, or the run `model.checkpoint` points into), `noRL` for a prompted model, and the
  policy's name for a non-model policy (scripted, lazy, oracle);
- the reward setting (`answer_only`, `all_returns`, or the weights) is the training's.
Methods are taken by name, so any method the harness gains appears as its own row.

Tables hold `Cell`s: a number with the runs that produced it (a mean when several runs share
a key). Markdown and HTML render the same tables; a missing cell is "—", never 0. The paper's
numbers (`data/paper_results.json`) appear beside ours only where the backbone matches.
"""

from __future__ import annotations

import base64
import dataclasses
import glob
import html
import io
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agemem_jax import methods
from agemem_jax import tools as T
from agemem_jax.metrics_log import read_jsonl

PAPER_FILE = Path(__file__).resolve().parent / "data" / "paper_results.json"
BENCHMARKS = ("alfworld", "sciworld", "pddl", "babyai", "hotpotqa")
BENCH_LABELS = {"alfworld": "ALFWorld", "sciworld": "SciWorld", "pddl": "PDDL",
                "babyai": "BabyAI", "hotpotqa": "HotpotQA"}  # fmt: skip
TOOL_LABELS = {T.ADD: "ADD", T.UPDATE: "UPDATE", T.DELETE: "DELETE", T.RETRIEVE: "RETRIEVE",
               T.SUMMARY: "SUMMARY", T.FILTER: "FILTER"}  # fmt: skip
MISSING = "—"
PAPER_TITLE = "published in the AgeMem paper (agemem_jax/data/paper_results.json)"


def paper_results() -> dict[str, Any]:
    return json.loads(PAPER_FILE.read_text())


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# --------------------------------------------------------------------------- runs
@dataclasses.dataclass
class RunInfo:
    """One run directory and what it is."""

    path: Path
    name: str
    method: str = ""
    bench: str = "hotpotqa"
    policy: str = "model"
    training: str = "noRL"
    reward: str | None = None  # the training's reward setting (GRPO runs)
    backbone: str = ""
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    eval: dict[str, Any] | None = None  # eval/metrics.json
    curve: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # metrics.jsonl

    @property
    def row(self) -> tuple[str, str, str]:
        return (self.method, self.training, self.reward or "")

    @property
    def eval_file(self) -> Path:
        return self.path / "eval" / "metrics.json"

    @property
    def train_file(self) -> Path:
        return self.path / "metrics.jsonl"


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def reward_setting(reward: dict[str, Any]) -> str:
    """answer_only, all_returns, or the three weights."""
    w = [float(reward.get(k, 1 / 3)) for k in ("w_task", "w_context", "w_memory")]
    if w[1] == 0 and w[2] == 0:
        return "answer_only"
    if all(math.isclose(x, w[0]) for x in w):
        return "all_returns"
    return "w=" + "/".join(f"{x:.2g}" for x in w)


def _backbone(model: dict[str, Any]) -> str:
    if model.get("random"):
        return f"random-{model['random']}"
    return Path(str(model.get("checkpoint", ""))).name or "?"


def _is_run(d: Path) -> bool:
    return (d / "eval" / "metrics.json").is_file() or (d / "metrics.jsonl").is_file()


def discover(patterns: Sequence[str]) -> list[Path]:
    """Run directories under each glob or directory (a sweep directory holds many)."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or []
        if not matches:
            raise FileNotFoundError(f"--runs={pattern!r} matches nothing")
        for m in map(Path, matches):
            if _is_run(m):
                found[m.resolve()] = None
            for f in sorted(m.rglob("metrics.json*")) if m.is_dir() else ():
                d = f.parent.parent if f.parent.name == "eval" else f.parent
                if _is_run(d) and "export" not in d.parts:
                    found[d.resolve()] = None
    return list(found)


def load_run(path: Path, root: Path | None = None) -> RunInfo:
    meta = _json(path / "run.json")
    name = meta.get("name") or (str(path.relative_to(root)) if root else path.name)
    info = RunInfo(path=path, name=name, tags=dict(meta.get("tags", {})))
    ev_cfg = _json(path / "eval" / "config.json")
    tr_cfg = _json(path / "config.json")
    info.eval = _json(info.eval_file) or None
    info.curve = read_jsonl(info.train_file)
    cfg = ev_cfg or tr_cfg
    info.method = str((info.eval or {}).get("method") or cfg.get("method") or "agemem")
    info.bench = str((info.eval or {}).get("bench") or cfg.get("bench") or "hotpotqa")
    info.policy = str(cfg.get("policy", "model"))
    train_cfg = tr_cfg if info.curve else {}
    ckpt = str(cfg.get("model", {}).get("checkpoint", ""))
    if not train_cfg and ckpt.rstrip("/").endswith("export"):  # a GRPO run's exported policy
        parent = Path(ckpt).parent
        if (parent / "metrics.jsonl").is_file():
            train_cfg = _json(parent / "config.json")
    if info.policy != "model":
        info.training, info.backbone = info.policy, info.policy
    elif train_cfg:
        info.training = "GRPO"
        info.reward = reward_setting(train_cfg.get("reward", {}))
        info.backbone = _backbone(train_cfg.get("model", {}))
    else:
        info.backbone = _backbone(cfg.get("model", {}))
    return info


def load_runs(patterns: Sequence[str]) -> list[RunInfo]:
    paths = discover(patterns)
    if not paths:
        raise FileNotFoundError(f"no runs (eval/metrics.json or metrics.jsonl) under {patterns}")
    root = Path(os.path.commonpath([str(p) for p in paths]))
    root = root if len(paths) > 1 else root.parent
    return [load_run(p, root) for p in paths]


def paper_backbone(backbone: str, paper: dict[str, Any]) -> str | None:
    """The paper's backbone name when ours is the same model, else None."""
    b = backbone.lower()
    for name, aliases in paper["backbones"].items():
        if any(a in b for a in aliases):
            return name
    return None


# --------------------------------------------------------------------------- tables
@dataclasses.dataclass
class Cell:
    value: float | None = None
    links: list[tuple[str, Path]] = dataclasses.field(default_factory=list)  # (run, file)
    fmt: str = "{:.3f}"
    text: str | None = None  # a label cell

    def shown(self) -> str:
        if self.text is not None:
            return self.text
        if self.value is None or not math.isfinite(self.value):
            return MISSING
        return self.fmt.format(self.value)


@dataclasses.dataclass
class Table:
    key: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    note: str = ""


def _mean_cell(runs: Sequence[RunInfo], get: Callable[[RunInfo], Any], fmt: str, file) -> Cell:
    vals, links = [], []
    for r in runs:
        v = get(r)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            vals.append(float(v))
            links.append((r.name, file(r)))
    return Cell(float(np.mean(vals)) if vals else None, links, fmt)


def bench_score(run: RunInfo) -> float | None:
    """The benchmark's metric in percent: J for HotpotQA, SR or PR for the others."""
    m = run.eval or {}
    for key in ("judge_score", "success_rate", "progress_rate"):
        if key == "judge_score" and run.bench != "hotpotqa":
            continue
        if isinstance(m.get(key), int | float):
            return 100.0 * float(m[key])
    return None


def row_label(row: tuple[str, str, str]) -> str:
    method, training, reward = row
    return " · ".join(x for x in (method, training, reward) if x)


def _paper_row(row: tuple[str, str, str], paper: dict[str, Any]) -> str | None:
    method, training, reward = row
    if reward not in ("", "all_returns"):
        return None
    for key, spec in paper["rows"].items():
        if _norm(spec["method"]) == _norm(method) and spec["training"] == training:
            return key
    return None


def _groups(runs: Sequence[RunInfo], key: Callable[[RunInfo], Any]) -> dict[Any, list[RunInfo]]:
    out: dict[Any, list[RunInfo]] = defaultdict(list)
    for r in runs:
        out[key(r)].append(r)
    return dict(out)


def table2(runs: Sequence[RunInfo], paper: dict[str, Any]) -> list[Table]:
    """Benchmarks x methods (+ average), one table per backbone."""
    evals = [r for r in runs if r.eval]
    tables = []
    if not evals:
        return [Table("table2", "Table 2: benchmarks x methods", ["method"], [],
                      "No evaluation (eval/metrics.json) among the runs.")]  # fmt: skip
    for backbone, group in sorted(_groups(evals, lambda r: r.backbone).items()):
        pb = paper_backbone(backbone, paper)
        cols = ["method"]
        for b in BENCHMARKS:
            cols += [BENCH_LABELS[b]] + ([f"{BENCH_LABELS[b]} (paper)"] if pb else [])
        cols += ["Avg"] + (["Avg (paper)"] if pb else [])
        rows = []
        for row, rr in sorted(_groups(group, lambda r: r.row).items()):
            prow = _paper_row(row, paper) if pb else None
            line, ours = [Cell(text=row_label(row))], []
            for b in BENCHMARKS:
                cell = _mean_cell([r for r in rr if r.bench == b], bench_score, "{:.2f}",
                                  lambda r: r.eval_file)  # fmt: skip
                ours.append(cell)
                line.append(cell)
                if pb:
                    v = paper["per_benchmark"].get(pb, {}).get(prow, {}).get(b) if prow else None
                    line.append(Cell(v, fmt="{:.2f}"))
            # The average over the five benchmarks exists only when all five do.
            avg = Cell(fmt="{:.2f}")
            if all(c.value is not None for c in ours):
                avg = Cell(float(np.mean([c.value for c in ours])),
                           [lk for c in ours for lk in c.links], "{:.2f}")  # fmt: skip
            line.append(avg)
            if pb:
                v = paper["average"].get(pb, {}).get(prow) if prow else None
                line.append(Cell(v, fmt="{:.2f}"))
            rows.append(line)
        note = (
            f"Paper numbers ({pb}) beside ours."
            if pb
            else f"Backbone {backbone}: the paper reports Qwen2.5-7B and Qwen3-4B only, so no "
            "paper numbers stand beside these."
        )
        note += " Scores in percent (HotpotQA: judge score J x 100; PDDL: progress rate)."
        tables.append(Table(f"table2_{_slug(backbone)}",
                            f"Table 2: benchmarks x methods ({backbone})", cols, rows, note))  # fmt: skip
    return tables


def _tool_calls(name: str) -> Callable[[RunInfo], Any]:
    def get(r: RunInfo):
        m = r.eval or {}
        return m.get("tool_calls") if name == "total" else m.get("tool_calls_by_name", {}).get(name)

    return get


def _method_tools(method: str) -> tuple[str, ...]:
    """The agent tools of a method of the harness; every tool for a method it does not know."""
    try:
        return methods.method_spec(method).tools
    except ValueError:
        return tuple(TOOL_LABELS)


def table3(runs: Sequence[RunInfo], paper: dict[str, Any]) -> list[Table]:
    """Tool calls per HotpotQA episode: each training of a method side by side (noRL, GRPO)."""
    hp = [r for r in runs if r.eval and r.bench == "hotpotqa"]
    tables = []
    for (backbone, method), group in sorted(_groups(hp, lambda r: (r.backbone, r.method)).items()):
        pb = paper_backbone(backbone, paper)
        calls = paper["tool_calls_hotpotqa"].get(pb, {}) if pb and method == "agemem" else {}
        by_training = sorted(_groups(group, lambda r: (r.training, r.reward or "")).items())
        cols = ["tool"] + [" · ".join(x for x in k if x) for k, _ in by_training]
        cols += [f"paper {k} ({pb})" for k in calls]
        has = _method_tools(method)
        rows = []
        for name in [*TOOL_LABELS, "total"]:
            line = [Cell(text=TOOL_LABELS.get(name, "total"))]
            if name != "total" and name not in has:  # not a tool of this method: no count
                line += [Cell() for _ in by_training]
            else:
                line += [_mean_cell(rr, _tool_calls(name), "{:.2f}", lambda r: r.eval_file)
                         for _, rr in by_training]  # fmt: skip
            line += [Cell(calls[k].get(name), fmt="{:.2f}") for k in calls]
            rows.append(line)
        if not any(k[0] == "noRL" for k, _ in by_training):
            note = "No prompted (noRL) run of this method: its column is absent."
        elif not any(k[0] == "GRPO" for k, _ in by_training):
            note = "No GRPO-trained run of this method: its column is absent."
        else:
            note = ""
        tables.append(Table(f"table3_{_slug(backbone)}_{_slug(method)}",
                            f"Table 3: tool calls per HotpotQA episode, {method} ({backbone})",
                            cols, rows, note))  # fmt: skip
    if not tables:
        tables.append(Table("table3", "Table 3: tool calls per HotpotQA episode", ["tool"], [],
                            "No HotpotQA evaluation among the runs."))  # fmt: skip
    return tables


ABLATION_METRICS = {
    "J": ("judge_score", "{:.3f}"),
    "TN": ("prompt_tokens", "{:.0f}"),
    "MQ": ("memory_quality", "{:.3f}"),
    "TC": ("tool_calls", "{:.2f}"),
}


def table4(runs: Sequence[RunInfo], paper: dict[str, Any]) -> list[Table]:
    """The reward ablation: J / TN / MQ / TC of GRPO-trained policies per reward setting."""
    trained = [r for r in runs if r.eval and r.bench == "hotpotqa" and r.training == "GRPO"]
    tables = []
    for backbone, group in sorted(_groups(trained, lambda r: r.backbone).items()):
        pb = paper_backbone(backbone, paper)
        ref = paper["reward_ablation"].get(pb, {}) if pb else {}
        cols = ["reward", "method", *ABLATION_METRICS]
        cols += [f"{m} (paper)" for m in ABLATION_METRICS] if ref else []
        rows = []
        for (reward, method), rr in sorted(
            _groups(group, lambda r: (r.reward or "", r.method)).items()
        ):
            line = [Cell(text=reward), Cell(text=method)]
            for key, fmt in ABLATION_METRICS.values():
                line.append(_mean_cell(rr, lambda r, k=key: (r.eval or {}).get(k), fmt,
                                       lambda r: r.eval_file))  # fmt: skip
            if ref:
                p = ref.get(reward, {}) if method == "agemem" else {}
                line += [Cell(p.get(m), fmt=f) for m, (_, f) in ABLATION_METRICS.items()]
            rows.append(line)
        tables.append(Table(f"table4_{_slug(backbone)}",
                            f"Table 4: reward ablation ({backbone})", cols, rows,
                            "J and MQ on the judge's 0-1 scale; TN = mean prompt tokens per "
                            "step; TC = tool calls per episode."))  # fmt: skip
    if not tables:
        tables.append(Table("table4", "Table 4: reward ablation", ["reward"], [],
                            "No HotpotQA evaluation of a GRPO-trained policy among the runs."))  # fmt: skip
    return tables


COST_METRICS = {
    "score": (None, "{:.2f}"),
    "MQ": ("memory_quality", "{:.3f}"),
    "TN": ("prompt_tokens", "{:.0f}"),
    "LLM calls/ep": ("llm_calls_per_episode", "{:.1f}"),
    "LLM tokens/ep": ("llm_tokens_per_episode", "{:.0f}"),
    "JSON failures": ("json_parse_failures", "{:.0f}"),
    "ingest p50 (s)": ("ingest_p50_s", "{:.2f}"),
    "search p50 (s)": ("search_p50_s", "{:.3f}"),
    "format errors": ("format_error_rate", "{:.2f}"),
}


def memory_costs(runs: Sequence[RunInfo]) -> list[Table]:
    """What each memory system spends, per benchmark: the baselines' side of the comparison.

    One row per (benchmark, method) of prompted and trained evaluations: the benchmark score (as
    in Table 2), memory quality, prompt tokens, the memory system's own LLM calls and tokens per
    episode, the JSON replies it could not use, and median ingest / search latency.
    """
    evals = [r for r in runs if r.eval]
    tables = []
    for backbone, group in sorted(_groups(evals, lambda r: r.backbone).items()):
        rows = []
        order = {b: i for i, b in enumerate(BENCHMARKS)}
        keyed = _groups(group, lambda r: (r.bench, r.row))
        for (bench, row), rr in sorted(
            keyed.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0])
        ):
            line = [Cell(text=BENCH_LABELS.get(bench, bench)), Cell(text=row_label(row))]
            line.append(_mean_cell(rr, lambda r: (r.eval or {}).get("episodes"), "{:.0f}",
                                   lambda r: r.eval_file))  # fmt: skip
            for key, fmt in COST_METRICS.values():
                get = bench_score if key is None else (lambda r, k=key: (r.eval or {}).get(k))
                line.append(_mean_cell(rr, get, fmt, lambda r: r.eval_file))
            rows.append(line)
        tables.append(Table(f"memory_costs_{_slug(backbone)}",
                            f"Memory systems: score and cost per episode ({backbone})",
                            ["benchmark", "method", "episodes", *COST_METRICS], rows,
                            "score as in Table 2 (percent); MQ on 0-1 (HotpotQA only); TN = mean "
                            "prompt tokens per step; LLM calls/tokens = the memory system's own "
                            "(extraction, update, evolution), not the agent's; JSON failures are "
                            "replies the system could not use (counted, never dropped silently); "
                            "— = the method has no such step."))  # fmt: skip
    return tables


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()


# --------------------------------------------------------------------------- figures
@dataclasses.dataclass
class Figure:
    key: str
    title: str
    png: bytes | None  # None: nothing to plot
    links: list[tuple[str, Path]]
    note: str = ""


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _bars(runs: Sequence[RunInfo], key: str, fig_key: str, title: str, ylabel: str) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hp = [r for r in runs if r.eval and r.bench == "hotpotqa"]
    bars = []
    for (backbone, row), rr in sorted(_groups(hp, lambda r: (r.backbone, r.row)).items()):
        cell = _mean_cell(rr, lambda r: (r.eval or {}).get(key), "{}", lambda r: r.eval_file)
        if cell.value is not None:
            bars.append((f"{row_label(row)}\n({backbone})", cell.value, cell.links))
    if not bars:
        return Figure(fig_key, title, None, [], f"no HotpotQA evaluation reports {key}")
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(bars)), 3.6))
    ax.bar(range(len(bars)), [b[1] for b in bars], color="#4c72b0")
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=30, ha="right", fontsize=8)
    for i, b in enumerate(bars):
        label = f"{b[1]:.0f}" if abs(b[1]) >= 100 else f"{b[1]:.3f}"
        ax.annotate(label, (i, b[1]), ha="center", va="bottom", fontsize=8)
    top = max(b[1] for b in bars)
    ax.set_ylim(0, 1.15 * top if top > 0 else 1.0)  # MQ and token counts are never negative
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return Figure(fig_key, title, _png(fig), [lk for b in bars for lk in b[2]])


def fig5(runs: Sequence[RunInfo]) -> Figure:
    """Mean reward over GRPO steps, ± std across the runs of each (reward, method)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = "Fig. 5: mean rollout reward over GRPO steps (± std across runs)"
    trained = [r for r in runs if r.curve]
    if not trained:
        return Figure("fig5_reward_curves", title, None, [], "no GRPO run (metrics.jsonl)")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    links = []
    for (backbone, reward, method), rr in sorted(
        _groups(trained, lambda r: (r.backbone, r.reward or "", r.method)).items()
    ):
        series = [{int(x["step"]): x.get("reward_mean") for x in r.curve} for r in rr]
        steps = sorted({s for d in series for s in d})
        mean, std = [], []
        for s in steps:
            v = [x for d in series if isinstance(x := d.get(s), int | float) and math.isfinite(x)]
            mean.append(np.mean(v) if v else np.nan)
            std.append(np.std(v) if v else np.nan)
        m, sd = np.asarray(mean), np.asarray(std)
        (line,) = ax.plot(steps, m, marker="o", ms=3,
                          label=f"{reward} · {method} ({backbone}, {len(rr)} run(s))")  # fmt: skip
        ax.fill_between(steps, m - sd, m + sd, alpha=0.2, color=line.get_color())
        links += [(r.name, r.train_file) for r in rr]
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return Figure("fig5_reward_curves", title, _png(fig), links)


def figures(runs: Sequence[RunInfo]) -> list[Figure]:
    return [
        _bars(runs, "memory_quality", "fig2_memory_quality",
              "Fig. 2: memory quality (MQ) on HotpotQA per method", "MQ (0-1)"),
        _bars(runs, "prompt_tokens", "fig3_prompt_tokens",
              "Fig. 3: prompt tokens per step on HotpotQA per method", "prompt tokens"),
        fig5(runs),
    ]  # fmt: skip


# --------------------------------------------------------------------------- rendering
def _link(path: Path, out: Path) -> str:
    return os.path.relpath(path, out)


def _md_cell(c: Cell, out: Path) -> str:
    text = c.shown()
    if c.text is not None or text == MISSING or not c.links:
        return text.replace("|", "\\|")
    first = f"[{text}]({_link(c.links[0][1], out)})"
    more = "".join(f" [{i + 2}]({_link(p, out)})" for i, (_, p) in enumerate(c.links[1:]))
    return first + more


def to_markdown(tables: Sequence[Table], figs: Sequence[Figure], runs, out: Path) -> str:
    lines = ["# AgeMem results", "", f"{len(runs)} run(s). Every number links to the metrics "
             "file of the run that produced it (several links: the mean over those runs). "
             f"Missing cells are {MISSING}.", ""]  # fmt: skip
    for t in tables:
        lines += [f"## {t.title}", ""]
        if t.note:
            lines += [t.note, ""]
        if not t.rows:
            continue
        lines.append("| " + " | ".join(t.columns) + " |")
        lines.append("|" + "---|" * len(t.columns))
        lines += ["| " + " | ".join(_md_cell(c, out) for c in row) + " |" for row in t.rows]
        lines.append("")
    for f in figs:
        lines += [f"## {f.title}", ""]
        if f.png is None:
            lines += [f"Not drawn: {f.note}.", ""]
            continue
        lines += [f"![{f.title}]({f.key}.png)", ""]
        lines += ["Runs: " + ", ".join(f"[{n}]({_link(p, out)})" for n, p in f.links), ""]
    lines += ["## Runs", "", "| run | method | training | reward | backbone | bench | tags |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in runs:
        src = r.eval_file if r.eval else r.train_file
        tags = ", ".join(f"{k}={v}" for k, v in r.tags.items())
        lines.append(f"| [{r.name}]({_link(src, out)}) | {r.method} | {r.training} | "
                     f"{r.reward or MISSING} | {r.backbone} | {r.bench} | {tags or MISSING} |")  # fmt: skip
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#eef}
td.missing{color:#999;text-align:center}td.paper{color:#555;font-style:italic}.note{color:#555;font-size:13px}
img{max-width:100%;border:1px solid #ddd}
"""


def _html_cell(c: Cell, out: Path) -> str:
    text = html.escape(c.shown())
    if c.text is None and text == MISSING:
        return f'<td class="missing">{text}</td>'
    if c.text is None and not c.links:  # a number from the paper, not from a run
        return f"<td class='paper' title='{html.escape(PAPER_TITLE)}'>{text}</td>"
    if c.text is not None:
        return f"<td>{text}</td>"
    first = f'<a href="{html.escape(_link(c.links[0][1], out))}" title="{html.escape(c.links[0][0])}">{text}</a>'
    more = "".join(
        f' <a href="{html.escape(_link(p, out))}" title="{html.escape(n)}"><sup>{i + 2}</sup></a>'
        for i, (n, p) in enumerate(c.links[1:])
    )
    return f"<td>{first}{more}</td>"


def to_html(tables: Sequence[Table], figs: Sequence[Figure], runs, out: Path) -> str:
    """One self-contained page: the figures are inlined as base64 PNG."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>AgeMem results</title>",
             f"<style>{_CSS}</style></head><body><h1>AgeMem results</h1>",
             f"<p class='note'>{len(runs)} run(s). Every number links to the metrics file of "
             "the run that produced it. Missing cells are —.</p>"]  # fmt: skip
    for t in tables:
        parts.append(f"<h2 id='{t.key}'>{html.escape(t.title)}</h2>")
        if t.note:
            parts.append(f"<p class='note'>{html.escape(t.note)}</p>")
        if not t.rows:
            continue
        parts.append(f"<table id='{t.key}_table'><tr>")
        parts += [f"<th>{html.escape(c)}</th>" for c in t.columns]
        parts.append("</tr>")
        for row in t.rows:
            parts.append("<tr>" + "".join(_html_cell(c, out) for c in row) + "</tr>")
        parts.append("</table>")
    for f in figs:
        parts.append(f"<h2 id='{f.key}'>{html.escape(f.title)}</h2>")
        if f.png is None:
            parts.append(f"<p class='note'>Not drawn: {html.escape(f.note)}.</p>")
            continue
        data = base64.b64encode(f.png).decode()
        parts.append(f"<img alt='{html.escape(f.title)}' src='data:image/png;base64,{data}'>")
        links = ", ".join(f"<a href='{html.escape(_link(p, out))}'>{html.escape(n)}</a>"
                          for n, p in f.links)  # fmt: skip
        parts.append(f"<p class='note'>Runs: {links}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(patterns: Sequence[str], out: str | Path) -> dict[str, Any]:
    """Writes report.md, report.html and one PNG per figure under `out`; returns a summary."""
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(patterns)
    paper = paper_results()
    tables = [*table2(runs, paper), *table3(runs, paper), *table4(runs, paper),
              *memory_costs(runs)]  # fmt: skip
    figs = figures(runs)
    for f in figs:
        if f.png is not None:
            (out / f"{f.key}.png").write_bytes(f.png)
    (out / "report.md").write_text(to_markdown(tables, figs, runs, out))
    (out / "report.html").write_text(to_html(tables, figs, runs, out))
    return {
        "runs": len(runs),
        "tables": [t.key for t in tables],
        "figures": [f.key for f in figs if f.png is not None],
        "empty_figures": {f.key: f.note for f in figs if f.png is None},
        "out": str(out),
    }
