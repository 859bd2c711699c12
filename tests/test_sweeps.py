"""Sweeps expand, run, resume and retry; the report's tables equal the runs' metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from headless import open_page, pixel_std

from agemem_jax import methods, results, sweeps

ROOT = Path(__file__).resolve().parents[1]

# 2 reward settings x 2 tool ablations, evaluated with the scripted expert on one procedural
# task each (seconds per run); `:broken` adds a run that fails every time.
CI_SWEEP = """
from agemem_jax import sweeps

def get_sweep(arg=None):
    points = sweeps.product(sweeps.reward_variants(), sweeps.tool_ablations(("full", "lt_only")))
    if arg == "broken":
        points.append(sweeps.Point({"method": "no_such_method"}, (("tools", "broken"),)))
    return sweeps.Sweep(name="ci", eval="configs/hotpotqa.py:synthetic_cpu",
                        base={"data.limit": 1, "encoder": "hash"}, points=points)
"""


def _launch(*flags: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch/sweep.py", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


# --------------------------------------------------------------------------- expansion
def test_tiny_sweep_expands_into_named_train_then_eval_runs(tmp_path):
    d = sweeps.load("configs/sweeps/reward_x_tools.py", "tiny")
    runs = sweeps.expand(d, tmp_path, python="py")
    assert [r.name for r in runs] == [
        "reward-answer_only.tools-full", "reward-answer_only.tools-lt_only",
        "reward-all_returns.tools-full", "reward-all_returns.tools-lt_only",
    ]  # fmt: skip
    train, ev = runs[1].stages
    assert train.argv[:3] == (
        "py",
        sweeps.TRAIN_ENTRY,
        "--config=configs/hotpotqa_grpo.py:tiny_cpu",
    )
    assert "--config.method=agemem_lt" in train.argv
    assert "--config.reward.w_context=0.0" in train.argv
    assert "--config.grpo.group_size=2" in train.argv and "--config.train.export=True" in train.argv
    # Evaluation loads the exported policy and gets no training-only flags.
    assert f"--config.model.checkpoint={tmp_path}/{runs[1].name}/export" in ev.argv
    assert not any(a.startswith(("--config.grpo.", "--config.train.")) for a in ev.argv)
    assert not runs[1].done()
    (tmp_path / runs[1].name).mkdir()
    (tmp_path / runs[1].name / "metrics.jsonl").write_text('{"step": 1}\n')
    assert not train.done()  # 1 of 2 steps: resumes
    (tmp_path / runs[1].name / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    assert train.done() and not ev.done()


def test_axes_and_bad_definitions():
    grid = sweeps.product(sweeps.group_sizes([4, 8]), sweeps.kl_betas([0.0, 0.1]))
    assert [sweeps.run_name(p.tags) for p in grid] == [
        "K-4.beta-0", "K-4.beta-0.1", "K-8.beta-0", "K-8.beta-0.1"]  # fmt: skip
    assert grid[3].overrides == {"grpo.group_size": 8, "grpo.loss.kl_beta": 0.1}
    assert len(sweeps.reward_weights([1.0], [0.0, 0.5], [0.0, 0.5])) == 4
    with pytest.raises(ValueError, match="same keys"):
        sweeps.product(sweeps.group_sizes([4]), sweeps.group_sizes([8]))
    with pytest.raises(ValueError, match="unknown method"):
        sweeps.method_axis(["agemem", "nope"])
    bad = sweeps.Sweep("bad", sweeps.sweep("grpo.no_such_knob", [1]),
                       train="configs/hotpotqa_grpo.py:tiny_cpu")  # fmt: skip
    with pytest.raises(ValueError, match=r"no config key .grpo\.no_such_knob."):
        sweeps.expand(bad, "/tmp/x")
    baseline = sweeps.Sweep("b", sweeps.method_axis(["rag"]), train="configs/hotpotqa_grpo.py")
    with pytest.raises(ValueError, match="prompted baseline"):
        sweeps.expand(baseline, "/tmp/x")


def test_dry_run_and_cluster_scripts(tmp_path):
    proc = _launch("--sweep=configs/sweeps/reward_x_tools.py:tiny", f"--dir={tmp_path}/a",
                   "--dry_run")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith(sys.executable + " experiments/train.py") for line in lines) == 4
    assert sum(" experiments/eval.py " in line for line in lines) == 4
    assert not (tmp_path / "a").exists()  # a dry run writes nothing
    tiny = sweeps.load("configs/sweeps/reward_x_tools.py", "tiny")
    echoed: list[str] = []
    assert sweeps.launch(tiny, tmp_path / "s", mode="slurm", echo=echoed.append) == 0
    script = (tmp_path / "s" / "slurm_array.sbatch").read_text()
    assert echoed[-1].startswith("4 runs: sbatch --array=0-3 ")
    assert script.count(" experiments/train.py ") == 4 and script.count("    test -f ") == 4
    assert len(json.loads((tmp_path / "s" / "sweep.json").read_text())["runs"]) == 4
    k_beta = sweeps.load("configs/sweeps/paper_grid.py", "k_beta")
    assert sweeps.launch(k_beta, tmp_path / "t", mode="tpu", echo=echoed.append) == 0
    script_lines = (tmp_path / "t" / "tpu_pod.sh").read_text().splitlines()
    assert sum(line.startswith("launch/tpu_pod.sh ") for line in script_lines) == 8
    with pytest.raises(FileNotFoundError, match="no sweep definition"):
        sweeps.load("configs/sweeps/nope.py")


def test_methods_on_the_interactive_benchmarks_expand_to_every_pair(tmp_path):
    """Every method x the four environments, each an evaluation of that benchmark's preset with
    the short shape; `expand` validates every override against its config."""
    runs = sweeps.expand(sweeps.load("configs/sweeps/methods_envs.py", "short"), tmp_path)
    benches = ("alfworld", "sciworld", "pddl", "babyai")
    assert sorted(r.name for r in runs) == sorted(
        f"bench-{b}.method-{m}" for b in benches for m in methods.METHODS)  # fmt: skip
    for r in runs:
        (stage,) = r.stages
        bench = r.name.split(".")[0].removeprefix("bench-")
        assert stage.kind == "eval"
        assert f"--config=configs/eval/{bench}.py:smollm2_cpu" in stage.argv
        assert {"--config.data.limit=2", "--config.episode.max_env_steps=2"} <= set(stage.argv)


# --------------------------------------------------------------------------- run and report
_LINK = re.compile(r"\[([^\]]+)\]\(([^)]+)\)")


def md_tables(md: str) -> dict[str, list[dict[str, str]]]:
    """{table title: rows as {column: cell text}} of a report.md."""
    out, title, cols = {}, None, None
    for line in md.splitlines():
        if line.startswith("## "):
            title, cols = line[3:], None
        elif line.startswith("|") and title and not line.startswith("|---"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if cols is None:
                cols = cells
                out[title] = []
            else:
                out[title].append(dict(zip(cols, cells, strict=True)))
    return out


def check_cell(cell: str, out: Path, metric, fmt: str) -> int:
    """A number cell equals `metric` averaged over the metrics files it links; returns how
    many runs it links."""
    links = _LINK.findall(cell)
    assert links, f"no link in {cell!r}"
    values = []
    for _, rel in links:
        path = (out / rel).resolve()
        assert path.is_file(), path
        values.append(metric(json.loads(path.read_text())))
    assert links[0][0] == fmt.format(float(np.mean(values))), (cell, values)
    return len(links)


TOOLS = {"ADD": "Add_memory", "UPDATE": "Update_memory", "DELETE": "Delete_memory",
         "RETRIEVE": "Retrieve_memory", "SUMMARY": "Summary_context", "FILTER": "Filter_context"}  # fmt: skip


def _tool_metric(label: str):
    if label == "total":
        return lambda m: m["tool_calls"]
    return lambda m: m["tool_calls_by_name"][TOOLS[label]]


def check_report(out: Path, n_runs: int, trained: bool) -> dict[str, list[dict[str, str]]]:
    """Every table and figure is there and every number in them is its runs' metric."""
    md = (out / "report.md").read_text()
    tables = md_tables(md)
    t2 = [t for t in tables if t.startswith("Table 2")]
    t3 = [t for t in tables if t.startswith("Table 3")]
    t4 = [t for t in tables if t.startswith("Table 4")]
    assert t2 and t3 and (t4 if trained else not t4), list(tables)
    linked = 0
    for row in tables[t2[0]]:
        linked += check_cell(row["HotpotQA"], out, lambda m: 100 * m["judge_score"], "{:.2f}")
        for col in ("ALFWorld", "SciWorld", "PDDL", "BabyAI", "Avg"):
            assert row[col] == results.MISSING  # no run, and no average over missing cells
    assert linked == n_runs
    for title in t3:
        method = title.split(", ")[1].split(" (")[0]
        tools = methods.method_spec(method).tools
        for row in tables[title]:
            for col, cell in row.items():
                if col == "tool" or col.startswith("paper"):
                    continue
                if row["tool"] != "total" and TOOLS[row["tool"]] not in tools:
                    assert cell == results.MISSING  # not the method's tool: not a zero
                else:
                    check_cell(cell, out, _tool_metric(row["tool"]), "{:.2f}")
    for title in t4:
        for row in tables[title]:
            for col, (key, fmt) in results.ABLATION_METRICS.items():
                check_cell(row[col], out, lambda m, k=key: m[k], fmt)
    (costs,) = [t for t in tables if t.startswith("Memory systems")]
    linked = 0
    for row in tables[costs]:
        linked += check_cell(row["score"], out, lambda m: 100 * m["judge_score"], "{:.2f}")
        for col, (key, fmt) in results.COST_METRICS.items():
            if key is None:
                continue
            # A metric the method has no step for (an AgeMem agent's ingest time) is "—".
            if row[col] != results.MISSING:
                check_cell(row[col], out, lambda m, k=key: m[k], fmt)
    assert linked == n_runs
    figs = ["fig2_memory_quality", "fig3_prompt_tokens"] + (
        ["fig5_reward_curves"] if trained else []
    )
    for f in figs:
        assert (out / f"{f}.png").stat().st_size > 5000
        assert f"]({f}.png)" in md
    return tables


def check_report_html(out: Path, n_images: int) -> None:
    shot = out / "report.png"
    page_html = (out / "report.html").read_text()
    assert page_html.count("src='data:image/png;base64,") == n_images
    assert "src='http" not in page_html and ".png'" not in page_html  # self-contained
    with open_page(out / "report.html") as (page, errors):
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        assert len(widths) == n_images and min(widths) > 100
        assert page.locator("table").count() >= 2
        page.screenshot(path=str(shot), full_page=True)
        assert errors == []
    assert pixel_std(shot) > 10.0


def test_sweep_runs_retries_resumes_and_reports(tmp_path):
    (tmp_path / "ci.py").write_text(CI_SWEEP)
    sweep_dir = tmp_path / "sweep"
    lines: list[str] = []
    broken = sweeps.load(tmp_path / "ci.py", "broken")
    assert sweeps.launch(broken, sweep_dir, parallel=2, echo=lines.append) == 1
    table = lines[-2]
    assert len(re.findall(r"^reward-\S+\s+done\s", table, re.M)) == 4, table
    assert re.search(r"^tools-broken\s+failed\s", table, re.M), table
    assert lines[-1] == "1 run(s) failed: tools-broken"
    assert (sweep_dir / "tools-broken" / "run.log").read_text().count("# attempt ") == 2
    index = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(index["runs"]) == 5
    # Re-running skips what its metrics files mark done.
    lines.clear()
    assert sweeps.launch(sweeps.load(tmp_path / "ci.py"), sweep_dir, echo=lines.append) == 0
    assert lines[-1].count("skipped (done)") == 4

    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "experiments/report.py", f"--runs={sweep_dir}",
                           f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["runs"] == 4  # the failed run has no metrics
    check_report(out, n_runs=4, trained=False)
    md = (out / "report.md").read_text()
    # Without training, Table 4 and Fig. 5 say why they are empty instead of showing zeros.
    assert "No HotpotQA evaluation of a GRPO-trained policy among the runs." in md
    assert "Not drawn: no GRPO run (metrics.jsonl)." in md
    check_report_html(out, n_images=2)


@pytest.mark.slow
def test_tiny_grpo_sweep_then_every_table_and_figure(tmp_path):
    """The reward x tools sweep on tiny_cpu: GRPO steps then evaluation, four runs."""
    sweep_dir = tmp_path / "rxt"
    proc = _launch("--sweep=configs/sweeps/reward_x_tools.py:tiny", f"--dir={sweep_dir}",
                   "--parallel=2", timeout=3600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "report"
    summary = results.build_report([str(sweep_dir)], out)
    assert summary["empty_figures"] == {}
    tables = check_report(out, n_runs=4, trained=True)
    (t4,) = [t for t in tables if t.startswith("Table 4")]
    assert {(r["reward"], r["method"]) for r in tables[t4]} == {
        (w, m) for w in ("answer_only", "all_returns") for m in ("agemem", "agemem_lt")}  # fmt: skip
    (t2,) = [t for t in tables if t.startswith("Table 2")]
    assert {r["method"] for r in tables[t2]} == {
        f"{m} · GRPO · {w}" for w in ("answer_only", "all_returns") for m in ("agemem", "agemem_lt")}  # fmt: skip
    md = (out / "report.md").read_text()
    fig5_runs = md[md.index("## Fig. 5") :].split("Runs: ", 1)[1].splitlines()[0]
    assert fig5_runs.count("metrics.jsonl") == 4
    check_report_html(out, n_images=3)


def test_paper_numbers_stand_beside_ours_only_for_the_papers_backbone(tmp_path):
    paper = results.paper_results()
    ev = {"judge_score": 0.5, "memory_quality": 0.4, "prompt_tokens": 2000.0, "tool_calls": 4.0,
          "tool_calls_by_name": dict.fromkeys(TOOLS.values(), 0.5)}  # fmt: skip

    def run(backbone: str, training: str) -> results.RunInfo:
        reward = "all_returns" if training == "GRPO" else None
        return results.RunInfo(tmp_path, f"{backbone}-{training}", "agemem", training=training,
                               reward=reward, backbone=backbone, eval=ev)  # fmt: skip

    runs = [run("Qwen2.5-7B-Instruct", "GRPO"), run("Qwen2.5-7B-Instruct", "noRL"),
            run("smollm2-135m-instruct", "GRPO")]  # fmt: skip
    qwen, smol = results.table2(runs, paper)
    assert "HotpotQA (paper)" in qwen.columns and "HotpotQA (paper)" not in smol.columns
    by_label = {row[0].shown(): row for row in qwen.rows}
    grpo, norl = by_label["agemem · GRPO · all_returns"], by_label["agemem · noRL"]
    col = qwen.columns.index
    assert grpo[col("HotpotQA")].shown() == "50.00"
    assert grpo[col("HotpotQA (paper)")].shown() == "54.44"
    assert grpo[col("Avg (paper)")].shown() == "41.96"
    assert grpo[col("Avg")].shown() == results.MISSING  # four benchmarks have no run
    assert norl[col("Avg (paper)")].shown() == "33.43"  # AgeMem-noRL
    assert norl[col("HotpotQA (paper)")].shown() == results.MISSING  # not published
    t4 = results.table4(runs, paper)[0]
    assert t4.title == "Table 4: reward ablation (Qwen2.5-7B-Instruct)"
    assert [c.shown() for c in t4.rows[0][-4:]] == ["0.544", "2117", "0.533", "4.92"]
    t3 = results.table3(runs, paper)[0]
    assert t3.columns[-2:] == ["paper noRL (Qwen2.5-7B)", "paper GRPO (Qwen2.5-7B)"]
    assert [c.shown() for c in t3.rows[-1][-2:]] == ["4.33", "4.92"]
