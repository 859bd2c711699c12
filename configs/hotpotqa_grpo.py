"""Step-wise GRPO on three-stage HotpotQA-style episodes (spec section 5).

    python experiments/train.py --config=configs/hotpotqa_grpo.py:tiny_cpu --workdir=/tmp/tr
    python experiments/sft.py --config=configs/hotpotqa_grpo.py:smollm2_cpu --workdir=/tmp/sft
    python experiments/train.py --config=configs/hotpotqa_grpo.py:smollm2_cpu --workdir=/tmp/tr \\
        --config.model.checkpoint=/tmp/sft/export

Presets:
  tiny_cpu       a random tiny Qwen3-shaped decoder with SmolLM2's tokenizer: seconds per step,
                 for tests of the loop (resume, sharding, logging); it learns nothing useful.
  smollm2_cpu    the embedded SmolLM2-135M-Instruct on procedural multi-hop data, sized for the
                 2-core CPU demo (short episodes, K=2, two steps): `make demo`.
  qwen3_4b_tpu   the paper's Qwen3-4B-Instruct setting on a TPU slice (B=8, K=8, bf16).
  qwen25_7b_gpu  the paper's Qwen2.5-7B-Instruct setting on a GPU cluster.
"""

import ml_collections as mlc

from agemem_jax.config_lib import grpo_config


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    preset = arg or "tiny_cpu"
    c = grpo_config()
    c.policy = "model"
    if preset == "tiny_cpu":
        c.model.random.update(
            vocab_size=0,  # 0: the tokenizer's size
            hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=16, qk_norm=True, tie_word_embeddings=True, rope_theta=1e6,
            architecture="Qwen3ForCausalLM", max_position_embeddings=4096,
        )  # fmt: skip
        c.model.tokenizer = "smollm2-135m-instruct"
        c.encoder = "hash"
        c.data.limit = 8
        c.episode.update(t1=1, t2=1, t3=2, max_actions_per_turn=1)
        c.sampling.max_new_tokens = 16
        c.memory.t_max = 2048
        c.grpo.update(tasks_per_step=1, group_size=4)
        c.optim.update(learning_rate=1e-3, warmup_steps=0, schedule="constant")
        c.train.update(steps=3, save_every=1, export=False)
    elif preset == "smollm2_cpu":
        # What `make demo` runs: every piece at full fidelity, every size cut to fit ~30 minutes
        # of 2 CPU cores (a step row is the whole context, so update cost is context length).
        c.model.update(scan_layers=True, remat_policy="full")
        c.memory.update(prompt_style="compact", t_max=4096)
        c.data.limit = 16
        c.episode.update(t1=1, t2=1, t3=2, max_actions_per_turn=2)
        # The expert's longest action (an Add_memory of two facts) is ~150 tokens; a shorter cap
        # cuts tool calls off before </tool_call> and every one counts as a format error.
        c.sampling.max_new_tokens = 192
        c.packing.tokens_per_micro = 4096
        c.grpo.update(tasks_per_step=1, group_size=2)
        c.optim.update(learning_rate=1e-5, warmup_steps=0, schedule="constant")
        c.train.update(steps=2, save_every=1)
        # One expert trajectory per step; 12 steps take the SFT loss from 1.5 to ~0.1.
        c.sft.update(steps=12, rows_per_step=6, learning_rate=1e-4)
    elif preset == "qwen3_4b_tpu":
        c.model.update(checkpoint="/path/to/Qwen3-4B-Instruct-2507", dtype="bfloat16",
                       scan_layers=True, remat_policy="dots_no_batch")  # fmt: skip
        c.mesh.shape = (1, -1, 1)
        c.data.update(source="hotpotqa", path="", split="train", limit=0)
        c.grpo.update(tasks_per_step=8, group_size=8)
        c.summarizer = "policy"
        c.sampling.max_new_tokens = 2048  # spec: max response length
    elif preset == "qwen25_7b_gpu":
        c.model.update(checkpoint="/path/to/Qwen2.5-7B-Instruct", dtype="bfloat16",
                       scan_layers=True, remat_policy="dots_no_batch")  # fmt: skip
        c.mesh.shape = (1, -1, 1)
        c.data.update(source="hotpotqa", path="", split="train", limit=0)
        c.grpo.update(tasks_per_step=8, group_size=8)
        c.summarizer = "policy"
        c.sampling.max_new_tokens = 2048
    else:
        raise ValueError(
            f"unknown preset {preset!r}: tiny_cpu, smollm2_cpu, qwen3_4b_tpu, qwen25_7b_gpu"
        )
    return c
