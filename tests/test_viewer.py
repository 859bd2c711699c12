"""The trajectory viewer: real evaluations rendered, then opened in headless Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from headless import open_page, pixel_std

from agemem_jax import tools as T
from agemem_jax import viewer
from agemem_jax.config_lib import from_file
from agemem_jax.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two methods evaluated with the scripted expert on the same procedural task."""
    out = {}
    for method in ("agemem", "agemem_lt"):
        cfg: Any = from_file("configs/hotpotqa.py", "synthetic_cpu")
        cfg.data.limit = 1
        cfg.encoder = "hash"
        cfg.method = method
        workdir = tmp_path_factory.mktemp(method)
        evaluate(cfg, workdir, progress=False)
        out[method] = workdir
    return out


def _episodes(workdir: Path) -> list[dict]:
    lines = (workdir / "eval" / "trajectories.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_steps_record_memory_diffs_and_context_edits(runs):
    """The store rebuilt from the per-step diffs is the final store; Filter steps say what
    they removed."""
    for ep in _episodes(runs["agemem"]):
        store: dict[str, str] = {}
        for s in ep["steps"]:
            d = s["memory_diff"]
            store |= {i: c for i, c in d.get("added", [])}
            store |= {i: new for i, _, new in d.get("updated", [])}
            for i, _ in d.get("deleted", []):
                del store[i]
        assert sorted(store.values()) == sorted(ep["memory"])
        filters = [s for s in ep["steps"] if any(c["name"] == T.FILTER and c["ok"]
                                                  and c["tokens_after"] < c["tokens_before"]
                                                  for c in s["calls"])]  # fmt: skip
        assert filters and all(s["context_edit"]["removed"] for s in filters)


def test_viewer_page_renders_steps_tool_calls_and_store(runs, tmp_path):
    out = viewer.write([runs["agemem"]], tmp_path / "view.html")
    episodes = _episodes(runs["agemem"])
    j, step = next((j, s) for j, s in enumerate(episodes[0]["steps"])
                   if s["calls"] and s["calls"][0]["name"] == T.ADD)  # fmt: skip
    call = step["calls"][0]
    shot = tmp_path / "view.png"
    with open_page(out) as (page, errors):
        node = page.locator(f"#ep0-s{j}-c0")
        assert node.get_attribute("data-tool") == T.ADD
        text = node.inner_text()
        assert call["arguments"]["content"][:40] in text
        assert call["result"]["memory_id"] in text
        step_text = page.locator(f"#ep0-s{j}").inner_text()
        assert f"prompt {step['prompt_tokens']} tokens" in step_text
        # The entry this step added is highlighted in the store shown after it.
        assert call["result"]["memory_id"] in page.locator(f"#ep0-s{j} li.added").inner_text()
        headers = page.locator("#ep0 table.reward th").all_inner_texts()
        assert set(viewer.REWARD_PARTS) <= set(headers)
        assert page.locator("#ep0 details.stage").count() == 3
        assert page.locator("#ep0 details.ctx").count() >= 1  # Filter/Summary edits
        page.screenshot(path=str(shot))
        assert errors == []
    assert pixel_std(shot) > 10.0


def test_viewer_filters_and_compares_two_methods(runs, tmp_path):
    out = viewer.write([runs["agemem"], runs["agemem_lt"]], tmp_path / "cmp.html")
    task = _episodes(runs["agemem"])[0]["task_id"]
    shot = tmp_path / "cmp.png"
    with open_page(out) as (page, errors):
        assert page.locator("#f-count").inner_text() == "2 of 2 episodes"
        page.select_option("#f-method", "agemem_lt")
        assert page.locator("#f-count").inner_text() == "1 of 2 episodes"
        assert page.locator("section.episode:not(.hidden)").count() == 1
        page.select_option("#f-method", "")
        page.select_option("#f-task", task)
        assert page.locator("#f-count").inner_text() == "2 of 2 episodes"
        page.fill("#f-rmin", "5")  # no reward reaches 5
        assert page.locator("#f-count").inner_text() == "0 of 2 episodes"
        page.fill("#f-rmin", "")
        page.select_option("#c-a", "agemem")
        page.select_option("#c-b", "agemem_lt")
        page.click("#c-go")
        cols = page.locator("#compare > div")
        assert cols.count() == 2
        for i, method in enumerate(("agemem", "agemem_lt")):
            col = cols.nth(i)
            assert col.locator("h3").inner_text() == f"{method} on {task}"
            assert col.locator("section.episode").get_attribute("data-method") == method
            assert col.locator("section.episode").get_attribute("data-task") == task
        page.locator("#compare").screenshot(path=str(shot))
        assert errors == []
    assert pixel_std(shot) > 10.0


def test_view_cli_reports_a_missing_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "experiments/view.py", f"--run={tmp_path / 'nope'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: FileNotFoundError: no trajec")
