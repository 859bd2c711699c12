"""The paper's tables and figures from run directories, as Markdown, PNG and one HTML page.

    python experiments/report.py --runs=runs/rxt --out=runs/rxt/report
    python experiments/report.py --runs='runs/*/' --runs=other/run --out=report

Writes `report.md`, one PNG per figure and `report.html` (figures inlined) under --out:
Table 2 (benchmarks x methods, the paper's numbers beside ours where the backbone matches),
Table 3 (tool calls per HotpotQA episode, noRL vs GRPO), Table 4 (reward ablation: J / TN /
MQ / TC), Fig. 2 (MQ per method), Fig. 3 (prompt tokens per method), Fig. 5 (reward over GRPO
steps, ± std across runs). Every number links to the metrics file of its run.
"""

from __future__ import annotations

import json

from absl import flags

from agemem_jax import cli, results

_RUNS = flags.DEFINE_multi_string("runs", None, "A run or sweep directory, or a glob of them.")
_OUT = flags.DEFINE_string("out", None, "Where report.md, report.html and the PNGs go.")
flags.mark_flags_as_required(["runs", "out"])


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    summary = results.build_report(cli.required(_RUNS), cli.required(_OUT))
    print(json.dumps(summary))


if __name__ == "__main__":
    cli.run(main)
