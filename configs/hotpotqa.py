"""Evaluation on three-stage HotpotQA-style episodes (spec sections 4, 6, 8).

    python experiments/eval.py --config=configs/hotpotqa.py:synthetic_cpu --workdir=/tmp/ev
    python experiments/eval.py --config=configs/hotpotqa.py:smollm2_cpu --workdir=/tmp/ev \\
        --config.policy=scripted --config.data.limit=20

Presets:
  synthetic_cpu  procedural multi-hop data (offline, seeded), scripted expert, rule judge.
  hotpotqa_cpu   the shared HotpotQA dev sample, scripted expert, rule judge.
  smollm2_cpu    the embedded SmolLM2-135M-Instruct as the policy on the shared sample.
"""

import ml_collections as mlc

from agemem_jax.data import SHARED_SAMPLE
from agemem_jax.tools import TOOL_NAMES


def common() -> mlc.ConfigDict:
    """Every block an AgeMem experiment reads; presets change only what they name."""
    c = mlc.ConfigDict()
    c.seed = 0
    c.multihost = ml_collections_none(bool)
    c.policy = "scripted"  # model | scripted | random

    c.model = mlc.ConfigDict()
    c.model.checkpoint = "smollm2-135m-instruct"  # HF folder, .gguf file, or embedded alias
    c.model.dtype = "float32"
    c.model.param_dtype = ""  # empty = same as dtype
    c.model.scan_layers = False
    c.model.remat_policy = "none"

    c.mesh = mlc.ConfigDict()
    c.mesh.shape = (1, 1, -1)  # (data, fsdp, tensor); -1 takes the remaining devices
    c.mesh.sample_rules = "sample"
    c.mesh.train_rules = "train"

    c.sampling = mlc.ConfigDict()
    c.sampling.temperature = 0.0
    c.sampling.top_k = 0
    c.sampling.top_p = 1.0
    c.sampling.max_new_tokens = 256
    c.sampling.stop = ("</tool_call>", "</answer>")

    c.data = mlc.ConfigDict()
    c.data.source = "synthetic"  # synthetic | hotpotqa
    c.data.path = ""  # hotpotqa: a local JSON file; empty = the hub
    c.data.split = "validation"
    c.data.limit = 20
    c.data.seed = 0

    c.episode = mlc.ConfigDict()
    c.episode.t1 = 4
    c.episode.t2 = 4
    c.episode.t3 = 4
    c.episode.max_actions_per_turn = 3
    c.episode.n_max = 30
    c.episode.introspective_top_k = 3

    c.memory = mlc.ConfigDict()
    c.memory.enabled_tools = TOOL_NAMES  # ablate by listing fewer
    c.memory.t_max = 8192
    c.memory.theta = 0.6
    c.memory.top_k = 3
    c.encoder = "minilm"  # minilm | hash (unit tests only)
    c.summarizer = "extractive"  # policy (the model summarizes) | extractive (deterministic)

    c.reward = mlc.ConfigDict()
    for k in ("w_task", "w_context", "w_memory"):
        c.reward[k] = 1 / 3
    for k in ("alpha_compression", "alpha_preventive", "alpha_preservation"):
        c.reward[k] = 1 / 3
    for k in ("beta_storage", "beta_maintenance", "beta_relevance"):
        c.reward[k] = 1 / 3
    c.reward.p_no_answer = -1.0
    c.reward.p_rounds = -1.0
    c.reward.p_overflow = -0.5

    c.judge = mlc.ConfigDict()
    c.judge.kind = "rule"  # rule | local (the policy model) | http (OpenAI-compatible)
    c.judge.base_url = ""
    c.judge.model = ""
    c.judge.api_key_env = "OPENAI_API_KEY"

    c.eval = mlc.ConfigDict()
    c.eval.batch_tasks = 8
    c.eval.group_size = 1
    return c


def ml_collections_none(kind):
    """A field that may stay None (follow the environment) but type-checks when set."""
    return mlc.FieldReference(None, field_type=kind)


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    preset = arg or "synthetic_cpu"
    c = common()
    if preset == "synthetic_cpu":
        c.data.source = "synthetic"
    elif preset == "hotpotqa_cpu":
        c.data.source, c.data.path, c.data.limit = "hotpotqa", str(SHARED_SAMPLE), 60
    elif preset == "smollm2_cpu":
        c.policy = "model"
        c.data.source, c.data.path, c.data.limit = "hotpotqa", str(SHARED_SAMPLE), 20
        c.summarizer = "policy"
    else:
        raise ValueError(f"unknown preset {preset!r}: synthetic_cpu, hotpotqa_cpu, smollm2_cpu")
    return c
