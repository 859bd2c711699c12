"""A static, self-contained HTML page of a run's episodes (`experiments/view.py`).

Reads `eval/trajectories.jsonl` (what `evaluate` writes) of one or more runs. Per episode: the
three stages; per step its prompt size, think text, tool calls with arguments and results, the
long-term store after the step with added / updated / deleted entries highlighted, context
edits (messages a Summary/Filter call removed, the summary written); the final answer against
gold and the reward in its nine parts. A bar at the top filters episodes by task, method and
reward, and puts two methods' episodes of one task side by side. No server, no network: the
page is one file with its script inline.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The reward's nine parts (spec section 6) and the sums they enter.
REWARD_PARTS = ("task", "compression", "preventive", "preservation", "storage", "maintenance",
                "relevance", "rounds_penalty", "overflow_penalty")  # fmt: skip
REWARD_SUMS = ("context", "memory", "penalty", "total")
STAGE_NAMES = {1: "Stage 1: LTM construction", 2: "Stage 2: STM control under distractors",
               3: "Stage 3: integrated reasoning", 0: "Environment episode"}  # fmt: skip
_THINK = re.compile(r"<think>(.*?)</think>", re.S)


def trajectories_file(run: str | Path) -> Path:
    run = Path(run)
    for cand in (run / "eval" / "trajectories.jsonl", run / "trajectories.jsonl", run):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"no trajectories.jsonl in {run} (run experiments/eval.py first)")


def load_run(run: str | Path) -> dict[str, Any]:
    """{name, method, episodes} of a run directory (or a trajectories.jsonl file)."""
    path = trajectories_file(run)
    base = path.parent.parent if path.parent.name == "eval" else path.parent
    meta = {}
    for f in (base / "run.json", path.parent / "metrics.json"):
        if f.is_file():
            meta |= json.loads(f.read_text())
    episodes = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            episodes.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i + 1} is not a JSON line: {e}") from e
    return {"name": meta.get("name") or base.name, "method": meta.get("method", "?"),
            "episodes": episodes}  # fmt: skip


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x):
        return fmt.format(x)
    return "—"


def _json_block(obj: Any, limit: int = 4000) -> str:
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit} more characters)"
    return f"<pre>{_e(text)}</pre>"


def _call(c: dict[str, Any], anchor: str) -> str:
    status = "ok" if c.get("ok") else f"error: {c.get('code')}"
    cls = "call ok" if c.get("ok") else "call err"
    tokens = f"{c.get('tokens_before', '?')}→{c.get('tokens_after', '?')} tokens"
    return (
        f"<div class='{cls}' id='{anchor}' data-tool='{_e(c.get('name'))}'>"
        f"<b class='tool'>{_e(c.get('name'))}</b> <span class='muted'>{_e(status)}, {tokens}</span>"
        f"<div class='cols'><div><i>arguments</i>{_json_block(c.get('arguments', {}))}</div>"
        f"<div><i>result</i>{_json_block(c.get('result', {}))}</div></div></div>"
    )


def _store(store: dict[str, str], diff: dict[str, list]) -> str:
    """The store after a step; entries this step added/updated/deleted are highlighted."""
    added = {i for i, _ in diff.get("added", [])}
    updated = {u[0]: u[1] for u in diff.get("updated", [])}
    rows = []
    for mid, content in store.items():
        if mid in added:
            rows.append(f"<li class='added'><code>{_e(mid)}</code> + {_e(content)}</li>")
        elif mid in updated:
            rows.append(f"<li class='updated'><code>{_e(mid)}</code> {_e(content)} "
                        f"<s class='muted'>{_e(updated[mid])}</s></li>")  # fmt: skip
        else:
            rows.append(f"<li><code>{_e(mid)}</code> {_e(content)}</li>")
    for mid, content in diff.get("deleted", []):
        rows.append(f"<li class='deleted'><code>{_e(mid)}</code> <s>{_e(content)}</s></li>")
    return (f"<div class='store'><i>long-term memory after this step ({len(store)} entries)</i>"
            f"<ul>{''.join(rows)}</ul></div>")  # fmt: skip


def _step(s: dict[str, Any], anchor: str, store: dict[str, str]) -> str:
    text = s.get("text", "")
    think = " ".join(t.strip() for t in _THINK.findall(text))
    parts = [f"<div class='step' id='{anchor}'>",
             f"<div class='stephead'>turn {_e(s.get('turn', '?'))} · prompt "
             f"<b class='ptok'>{_e(s.get('prompt_tokens', '?'))}</b> tokens · action "
             f"{_e(s.get('action_tokens', '?'))} tokens"
             + (f" · <span class='err'>{_e(s['error'])}</span>" if s.get("error") else "")
             + "</div>"]  # fmt: skip
    if think:
        parts.append(f"<div class='think'>think: {_e(think)}</div>")
    calls = s.get("calls", [])
    for j, c in enumerate(calls):
        if isinstance(c, dict):
            parts.append(_call(c, f"{anchor}-c{j}"))
        else:  # interactive benchmarks record tool names only
            parts.append(f"<div class='call ok' id='{anchor}-c{j}' data-tool='{_e(c)}'>"
                         f"<b class='tool'>{_e(c)}</b></div>")  # fmt: skip
    edit = s.get("context_edit") or {}
    if edit:
        removed = "".join(f"<li>{_e(t[:400])}</li>" for t in edit.get("removed", []))
        summaries = "".join(f"<li>{_e(t)}</li>" for t in edit.get("summaries", []))
        parts.append(
            "<details class='ctx'><summary>context edit: "
            f"{len(edit.get('removed', []))} message(s) removed"
            + (f", {len(edit.get('summaries', []))} summary written" if summaries else "")
            + f"</summary><ul class='removed'>{removed}</ul>"
            + (f"<i>summary</i><ul class='summary'>{summaries}</ul>" if summaries else "")
            + "</details>"
        )
    diff = s.get("memory_diff") or {}
    if diff:
        parts.append(_store(store, diff))
    if s.get("answer") is not None:
        parts.append(f"<div class='answer'>answer: <b>{_e(s['answer'])}</b></div>")
    if s.get("env_action") is not None:
        parts.append(f"<div class='answer'>action: <b>{_e(s['env_action'])}</b></div>"
                     f"<div class='muted'>observation: {_e(s.get('observation', ''))}</div>")  # fmt: skip
    if not (think or calls or s.get("answer") is not None):
        parts.append(f"<pre>{_e(text[:2000])}</pre>")
    parts.append("</div>")
    return "".join(parts)


def _reward_table(reward: dict[str, Any] | None) -> str:
    if not reward:
        return "<p class='muted'>no reward recorded</p>"
    head = "".join(f"<th>{_e(k)}</th>" for k in (*REWARD_PARTS, *REWARD_SUMS))
    row = "".join(f"<td>{_num(reward.get(k))}</td>" for k in (*REWARD_PARTS, *REWARD_SUMS))
    return f"<div class='scroll'><table class='reward'><tr>{head}</tr><tr>{row}</tr></table></div>"


def _episode(ep: dict[str, Any], run: dict[str, Any], idx: int) -> str:
    anchor = f"ep{idx}"
    task = str(ep.get("task_id") or ep.get("task") or f"episode {idx}")
    reward = ep.get("reward") or {}
    total = reward.get("total")
    if total is None and isinstance(ep.get("metrics"), dict):  # interactive benchmarks
        total = ep["metrics"].get("progress")
    shown_total = total if isinstance(total, int | float) and math.isfinite(total) else ""
    gold = ep.get("gold_answer")
    head = [
        f"<section class='episode' id='{anchor}' data-task='{_e(task)}' "
        f"data-method='{_e(run['method'])}' data-run='{_e(run['name'])}' "
        f"data-reward='{_e(shown_total)}'>",
        f"<h2>{_e(task)} <span class='muted'>rollout {_e(ep.get('rollout', 0))} · "
        f"{_e(run['method'])} · {_e(run['name'])} · reward {_num(total)}</span></h2>",
    ]
    if ep.get("question"):
        head.append(f"<div class='q'>question: {_e(ep['question'])}</div>")
    if gold is not None or ep.get("answer") is not None:
        score = reward.get("task")
        head.append(
            f"<div class='qa'>answer: <b>{_e(ep.get('answer'))}</b> · gold: <b>{_e(gold)}</b>"
            f" · judge {_num(score)} · memory quality {_num(ep.get('memory_quality'))}</div>"
        )
    head.append(_reward_table(ep.get("reward")))
    steps = ep.get("steps", [])
    store: dict[str, str] = {}
    body = []
    for stage in sorted({int(s.get("stage", 0)) for s in steps}):
        rows = []
        for j, s in enumerate(steps):
            if int(s.get("stage", 0)) != stage:
                continue
            diff = s.get("memory_diff") or {}
            for mid, content in diff.get("added", []):
                store[mid] = content
            for mid, _, new in diff.get("updated", []):
                store[mid] = new
            for mid, _ in diff.get("deleted", []):
                store.pop(mid, None)
            rows.append(_step(s, f"{anchor}-s{j}", dict(store)))
        body.append(f"<details open class='stage'><summary>{_e(STAGE_NAMES.get(stage, stage))}"
                    f" ({len(rows)} steps)</summary>{''.join(rows)}</details>")  # fmt: skip
    final = ep.get("memory")
    if final is not None:
        items = "".join(f"<li>{_e(c)}</li>" for c in final)
        body.append(f"<details><summary>final long-term memory ({len(final)} entries)</summary>"
                    f"<ul>{items}</ul></details>")  # fmt: skip
    return "".join(head + body) + "</section>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:1em 2em;color:#222;background:#fafafa}
.bar{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:.5em;z-index:2}
.bar label{margin-right:1em;font-size:13px}
section.episode{background:#fff;border:1px solid #ccc;border-radius:6px;padding:.5em 1em;margin:1em 0}
section.episode h2{font-size:16px;margin:.3em 0}
.muted{color:#777;font-weight:normal;font-size:12px}
.step{border-left:3px solid #9ab;margin:.5em 0;padding:.2em .6em}
.stephead{font-size:12px;color:#555}.think{color:#555;font-style:italic;margin:.2em 0}
.call{border:1px solid #cde;background:#f4f8ff;margin:.3em 0;padding:.2em .5em}
.call.err{border-color:#e99;background:#fff4f4}.err{color:#b00}
.cols{display:flex;gap:1em}.cols>div{flex:1;min-width:0}
pre{white-space:pre-wrap;word-break:break-word;font-size:11px;margin:.2em 0;background:#f6f6f6}
.store ul{margin:.2em 0;font-size:12px}.added{background:#e3f7e3}.updated{background:#fff6d6}
.deleted{background:#fde2e2}.answer{margin:.3em 0}.ctx{font-size:12px}
table.reward{border-collapse:collapse;font-size:11px;margin:.3em 0}
table.reward td,table.reward th{border:1px solid #ccc;padding:1px 5px;text-align:right}
#compare{display:none;gap:1em}#compare.on{display:flex}#compare>div{flex:1;min-width:0}
.hidden{display:none}.scroll{overflow-x:auto}
"""

_JS = """
(function () {
  const eps = Array.from(document.querySelectorAll('section.episode'));
  const $ = (id) => document.getElementById(id);
  function apply() {
    const task = $('f-task').value, method = $('f-method').value;
    const lo = parseFloat($('f-rmin').value), hi = parseFloat($('f-rmax').value);
    let shown = 0;
    for (const ep of eps) {
      const r = parseFloat(ep.dataset.reward);
      const ok = (!task || ep.dataset.task === task) && (!method || ep.dataset.method === method)
        && (isNaN(lo) || (!isNaN(r) && r >= lo)) && (isNaN(hi) || (!isNaN(r) && r <= hi));
      ep.classList.toggle('hidden', !ok);
      if (ok) shown += 1;
    }
    $('f-count').textContent = shown + ' of ' + eps.length + ' episodes';
  }
  function compare() {
    const task = $('f-task').value, box = $('compare');
    box.replaceChildren();
    const picks = [$('c-a').value, $('c-b').value];
    for (const m of picks) {
      const col = document.createElement('div');
      const ep = eps.find((e) => e.dataset.method === m && (!task || e.dataset.task === task));
      const title = document.createElement('h3');
      title.textContent = m + (task ? ' on ' + task : '');
      col.appendChild(title);
      if (ep) {
        const copy = ep.cloneNode(true);
        copy.removeAttribute('id');
        copy.classList.remove('hidden');
        copy.querySelectorAll('[id]').forEach((n) => n.removeAttribute('id'));
        col.appendChild(copy);
      } else {
        const p = document.createElement('p');
        p.textContent = 'no episode of this method on this task';
        col.appendChild(p);
      }
      box.appendChild(col);
    }
    box.classList.add('on');
  }
  for (const id of ['f-task', 'f-method', 'f-rmin', 'f-rmax']) {
    $(id).addEventListener('input', apply);
  }
  $('c-go').addEventListener('click', compare);
  $('c-off').addEventListener('click', () => $('compare').classList.remove('on'));
  apply();
})();
"""


def _options(values: Sequence[str], everything: str | None) -> str:
    opts = [f"<option value=''>{_e(everything)}</option>"] if everything is not None else []
    return "".join(opts + [f"<option value='{_e(v)}'>{_e(v)}</option>" for v in values])


def render(runs: Sequence[dict[str, Any]]) -> str:
    """The page for `runs` (each from `load_run`)."""
    sections, tasks, methods = [], {}, {}
    idx = 0
    for run in runs:
        methods[run["method"]] = None
        for ep in run["episodes"]:
            tasks[str(ep.get("task_id") or ep.get("task") or f"episode {idx}")] = None
            sections.append(_episode(ep, run, idx))
            idx += 1
    names = ", ".join(r["name"] for r in runs)
    method_list = list(methods)
    bar = (
        "<div class='bar'>"
        f"<label>task <select id='f-task'>{_options(list(tasks), 'all tasks')}</select></label>"
        f"<label>method <select id='f-method'>{_options(method_list, 'all methods')}"
        "</select></label>"
        "<label>reward ≥ <input id='f-rmin' type='number' step='0.05' size='5'></label>"
        "<label>≤ <input id='f-rmax' type='number' step='0.05' size='5'></label>"
        "<span id='f-count' class='muted'></span><br>"
        f"<label>compare <select id='c-a'>{_options(method_list, None)}</select></label>"
        f"<label>with <select id='c-b'>{_options(method_list[1:] + method_list[:1], None)}"
        "</select></label>"
        "<button id='c-go'>side by side (on the chosen task)</button> "
        "<button id='c-off'>close</button></div>"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<link rel='icon' href='data:,'>"
        f"<title>AgeMem trajectories: {_e(names)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Trajectories <span class='muted'>{_e(names)}</span></h1>{bar}"
        f"<div id='compare'></div><div id='episodes'>{''.join(sections)}</div>"
        f"<script>{_JS}</script></body></html>"
    )


def write(runs: Sequence[str | Path], out: str | Path) -> Path:
    """Render the runs' trajectories into the HTML file `out`."""
    loaded = [load_run(r) for r in runs]
    if not any(r["episodes"] for r in loaded):
        raise ValueError(f"no episodes in {', '.join(map(str, runs))}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(loaded))
    return out
