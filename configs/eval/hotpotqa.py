"""HotpotQA, the fifth benchmark: three-stage episodes with the LLM-judge score (J).

The presets are those of `configs/hotpotqa.py` (synthetic_cpu, hotpotqa_cpu, smollm2_cpu).
"""

from pathlib import Path

from agemem_jax.config_lib import from_file


def get_config(arg: str | None = None):
    return from_file(Path(__file__).resolve().parents[1] / "hotpotqa.py", arg)
