"""A static HTML page of a run's episodes, from its `eval/trajectories.jsonl`.

    python experiments/view.py --run=runs/ev                      # writes runs/ev/view.html
    python experiments/view.py --run=runs/a --run=runs/b --out=cmp.html   # two methods, compared

Per episode: the three stages; each step's prompt size, think text and tool calls (arguments
and results); the long-term store as it changes; Summary/Filter context edits; the answer
against gold; the reward in its nine parts. Filter by task, method or reward; put two methods'
episodes of one task side by side. The page needs no server.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from agemem_jax import cli, viewer

_RUN = flags.DEFINE_multi_string("run", None, "A run workdir (or a trajectories.jsonl file).")
_OUT = flags.DEFINE_string("out", None, "The HTML file (default: <first run>/view.html).")
flags.mark_flags_as_required(["run"])


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    runs = cli.required(_RUN)
    first = Path(runs[0])
    out = _OUT.value or (first if first.is_dir() else first.parent) / "view.html"
    print(viewer.write(runs, out))


if __name__ == "__main__":
    cli.run(main)
