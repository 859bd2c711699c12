"""Defaults shared by every experiment config (`configs/*.py` start from `base_config()`).

Each block is read by one builder in `agemem_jax.builders`; every value a researcher may sweep
lives here, with the method's numbers as defaults, and a preset changes only what it names.
"""

import importlib.util
from pathlib import Path

import ml_collections as mlc

from agemem_jax.tools import TOOL_NAMES

ROOT = Path(__file__).resolve().parents[1]  # the project root, where configs/ lives


def from_file(path: str | Path, arg: str | None = None) -> mlc.ConfigDict:
    """`get_config(arg)` of a config file, as `--config=<path>:<arg>` gives it, for code that
    builds a config outside absl flags (benchmarks, tests, one config file reusing another).
    A relative path is taken from the project root."""
    path = Path(path)
    path = path if path.is_absolute() else ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"no config file {path}")
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def base_config() -> mlc.ConfigDict:
    """Every block an AgeMem experiment reads; presets change only what they name."""
    c = mlc.ConfigDict()
    c.seed = 0
    c.multihost = mlc.FieldReference(None, field_type=bool)  # None: follow the environment
    c.policy = "scripted"  # model | scripted | random (| oracle on interactive benchmarks)
    c.method = "agemem"  # agemem | agemem_rag | agemem_lt | no_memory | rag (methods.py)
    c.bench = "hotpotqa"  # hotpotqa | alfworld | sciworld | babyai | pddl
    c.env = mlc.ConfigDict()  # the benchmark's task-list settings (envs.tasks(bench, **env))

    c.model = mlc.ConfigDict()
    c.model.checkpoint = "smollm2-135m-instruct"  # HF folder, .gguf file, or embedded alias
    c.model.dtype = "float32"
    c.model.param_dtype = ""  # empty = same as dtype
    c.model.scan_layers = False
    c.model.remat_policy = "none"
    c.model.random = mlc.ConfigDict()  # non-empty: a ModelConfig shape, randomly initialized
    c.model.tokenizer = ""  # with `random`: whose vocabulary (default: `checkpoint`'s)

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
    c.memory.prompt_style = "json"  # the spec's JSON schemas; "compact" for small CPU runs
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


def grpo_config() -> mlc.ConfigDict:
    """`base_config()` plus the training blocks (GRPO, optimizer, packing, update, loop, SFT)."""
    c = base_config()
    c.sampling.temperature = 1.0  # rollouts sample; evaluation presets stay greedy
    c.grpo = mlc.ConfigDict()
    c.grpo.tasks_per_step = 2  # B
    c.grpo.group_size = 8  # K (spec)
    c.grpo.advantage_eps = 1e-6
    c.grpo.loss = mlc.ConfigDict()
    c.grpo.loss.kl_beta = 0.1  # spec
    c.grpo.loss.kl_estimator = "k3"
    c.grpo.loss.clip_eps_low = 0.2
    c.grpo.loss.clip_eps_high = 0.2
    c.grpo.loss.aggregation = "seq_mean_token_mean"

    c.optim = mlc.ConfigDict()
    c.optim.learning_rate = 1e-6
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 10
    c.optim.total_steps = 100
    c.optim.weight_decay = 0.01
    c.optim.max_grad_norm = 1.0

    c.packing = mlc.ConfigDict()
    c.packing.tokens_per_micro = 16_384
    c.packing.min_row_len = 128
    c.packing.merge_prefixes = True  # steps whose context only grew share one packed chain

    c.trainer = mlc.ConfigDict()
    c.trainer.epochs = 1
    c.trainer.num_minibatches = 1
    c.trainer.logprob_chunk = 256

    c.train = mlc.ConfigDict()
    c.train.steps = 100  # the paper trains ~100 GRPO steps
    c.train.save_every = 10
    c.train.keep_checkpoints = 3
    c.train.export = True

    c.sft = mlc.ConfigDict()
    c.sft.steps = 0
    c.sft.rows_per_step = 32  # at least this many: whole expert trajectories are taken
    c.sft.learning_rate = 5e-5  # ours: the warm start moves much further than RL steps do
    return c


def env_eval_config(bench: str, env: dict, preset: str | None) -> mlc.ConfigDict:
    """Evaluation on an interactive benchmark (`configs/eval/<bench>.py`).

    Presets: oracle (the benchmark's expert through our protocol), random (the robustness
    floor), smollm2_cpu (the embedded model on 3 tasks).
    """
    c = base_config()
    c.bench = bench
    c.env.update(env)
    c.data.limit = 10
    c.memory.prompt_style = "compact"
    c.episode.max_actions_per_turn = 2  # memory turns allowed before each environment action
    c.episode.max_env_steps = 30  # AgentBoard's step limit
    preset = preset or "oracle"
    if preset in ("oracle", "random"):
        c.policy = preset
        c.encoder = "hash" if preset == "random" else "minilm"
    elif preset == "smollm2_cpu":
        c.policy = "model"
        c.data.limit = 3
        c.sampling.max_new_tokens = 64
    else:
        raise ValueError(f"unknown preset {preset!r}: oracle, random, smollm2_cpu")
    return c
