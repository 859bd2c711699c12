"""HotpotQA, the fifth benchmark: three-stage episodes with the LLM-judge score (J).

The presets are those of `configs/hotpotqa.py` (synthetic_cpu, hotpotqa_cpu, smollm2_cpu).
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "hotpotqa_config", Path(__file__).resolve().parents[1] / "hotpotqa.py"
)
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
get_config = _mod.get_config
