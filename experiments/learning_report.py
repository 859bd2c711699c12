"""The learning run's report: paired held-out deltas with bootstrap CIs, tool use, training logs.

    python experiments/learning_report.py --workdir=runs/learn_cpu \\
        --out=docs/results/learning_cpu.md --notes=docs/results/learning_cpu_notes.md

Reads what `experiments/learn.py` wrote and writes `--out` (Markdown) with its PNGs in the
folder of the same name. Headline: ΔJ and ΔMQ (GRPO − SFT) and ΔMQ (All-Returns −
Answer-Only), each a mean of per-task differences with a 95% bootstrap interval over tasks.
`--notes` (Markdown: the diagnosis written after reading the numbers) becomes a section.
`--tries` lists learn workdirs started from this run's SFT policy (`learn.sft_from`), each
paired against the same SFT evaluation in a section of its own.
"""

from __future__ import annotations

import json

from absl import flags

from agemem_jax import cli, learning

_WORKDIR = flags.DEFINE_string("workdir", None, "A learn workdir (experiments/learn.py).")
_OUT = flags.DEFINE_string("out", None, "The Markdown file to write; PNGs go beside it.")
_NOTES = flags.DEFINE_string("notes", None, "A Markdown file included as the diagnosis.")
_TRIES = flags.DEFINE_list("tries", [], "Learn workdirs started with learn.sft_from=--workdir.")


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    summary = learning.build_report(cli.required(_WORKDIR), cli.required(_OUT), notes=_NOTES.value,
                                    tries=_TRIES.value)  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    cli.run(main)
