"""One GRPO step of ours against TRL's `GRPOTrainer` at the same config; one JSON line per mode.

    python benchmarks/grpo_vs_trl.py [--modes full,lora] [--steps 3] [--threads 2]

Both sides: SmolLM2-135M-Instruct in f32 (the embedded GGUF; TRL loads it from an HF folder
that our export writes), one group of K=8 completions of exactly 128 tokens (no EOS can end
one) sampled at temperature 1 from the same chat prompt, β = 0.1 (a reference forward),
AdamW at lr 1e-6 with global-norm clipping 1.0, the same reward function. `lora`: rank 8,
alpha 16 on q, k, v, o, gate, up, down (TRL through PEFT, ours `model.lora_rank`). Each side
runs `--steps` steps; the first includes compilation (ours) or warm-up (torch), the last is the
steady step. Keys:
  mode             full | lora
  ours_step_s      our steady step: sampling + reward + update (reference, policy, AdamW)
  trl_step_s       TRL's steady step (`trainer.train` time per optimizer step)
  ratio            ours_step_s / trl_step_s (target <= 0.5)
  ours_split       generation_s, update_s; and, timed apart after the step with the same
                   compiled shapes: reference_s (reference forward), policy_fwd_s (policy
                   forward) and backward_optimizer_s = update_s - reference_s - policy_fwd_s
  trl_split        generation_s, reference_s (log-probs without grad: the reference, and
                   π_old when TRL computes it), policy_fwd_s (log-probs with grad), and
                   backward_optimizer_s = the step minus those and minus the reward
  ours_compile_s   our first step minus the steady one (compilation)
  ours_padding_waste  share of our packed positions that are padding (row lengths are
                   bucketed, `packing.row_len_steps` per doubling, so shapes and compiles stay
                   few; TRL pads to the longest row and compiles nothing)
  ours_update_ops  where one of our updates spends its time, from a profiler trace of it: the
                   milliseconds of each kind of XLA op (`ynn_fusion` = matmuls through YNNPACK,
                   `copy_*`/`transpose_*` = layout copies the backward's weight gradients
                   need), largest first; kinds are op names without their numeric suffix
  matmul_gflops    a jitted f32 1024x1024 matmul here, measured in the same run: this CPU's
                   practical peak for the model's matmuls
  ours_update_gflops  the update's matmul FLOPs (2 x weights x packed positions per forward:
                   reference, policy, and a backward of 2 forwards for full fine-tuning or 1
                   for LoRA, whose frozen weights need no gradient) over update_s
  floor_ratio      (generation_s + those FLOPs at matmul_gflops) / trl_step_s: the ratio left
                   if the update ran every matmul at the isolated peak with nothing else
  load             1-minute load average at the end: on a shared machine both sides slow down
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import tempfile
import time
from collections import defaultdict
from typing import Any

import jax
import numpy as np
from flax import nnx

from agemem_jax import rl_loss
from agemem_jax.chat import ChatFormat
from agemem_jax.models import load_checkpoint, save_checkpoint
from agemem_jax.packing import StepRow, pack
from agemem_jax.sampler import SamplerSession, SamplingParams
from agemem_jax.train_step import Trainer

MODEL = "smollm2-135m-instruct"
K, NEW_TOKENS, BETA, LR, RANK, ALPHA = 8, 128, 0.1, 1e-6, 8, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QUESTIONS = [
    "Which river flows through the capital of France, and what is the city called?",
    "Explain in a few sentences why the sky is blue.",
    "Give three tips for remembering facts from a long document.",
]


def reward(completions, **_) -> list[float]:
    """Distinct words per completion (any cheap function of the text does; both sides share it)."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[-1]["content"]
        out.append(len(set(text.split())) / 50.0)
    return out


def prompts(tokenizer) -> list[str]:
    chat = ChatFormat(tokenizer)
    return [
        tokenizer.decode(chat.conversation([{"role": "user", "content": q}]))
        + "<|im_start|>assistant\n"
        for q in QUESTIONS
    ]


# --------------------------------------------------------------------------- ours
def ours(mode: str, texts: list[str], steps: int, attention: str) -> dict:
    lora: dict[str, Any] = dict(lora_rank=RANK, lora_alpha=ALPHA) if mode == "lora" else {}
    model, tok = load_checkpoint(MODEL, attention_impl=attention, **lora)
    assert tok is not None
    trainer = Trainer(
        model,
        loss=dict(kl_beta=BETA),
        optim=dict(learning_rate=LR, warmup_steps=0, schedule="constant"),
        packing=dict(tokens_per_micro=K * 256, min_row_len=128),
    )
    times = []
    split: dict[str, float] = {}
    packed = None
    for step in range(steps):
        text = texts[step % len(texts)]
        ids = tok.encode(text, add_special_tokens=False)
        t0 = time.perf_counter()
        session = SamplerSession(trainer.model, tok, batch_size=K, eos_ids=(), seed=step)
        session.start([ids] * K)
        outs = [c for c in session.decode(NEW_TOKENS, SamplingParams(temperature=1.0)) if c]
        t_gen = time.perf_counter() - t0
        r = np.asarray(reward([c.text for c in outs]), np.float64).reshape(1, K)
        adv = rl_loss.group_advantages(r).reshape(-1)
        rows = [
            StepRow(ids, c.tokens, c.model_logprobs, float(a))
            for c, a in zip(outs, adv, strict=True)
        ]
        t1 = time.perf_counter()
        trainer.step(rows)
        jax.block_until_ready(trainer.params)
        t_upd = time.perf_counter() - t1
        times.append(time.perf_counter() - t0)
        assert all(len(c.tokens) == NEW_TOKENS for c in outs)
        split = {"generation_s": t_gen, "update_s": t_upd}
        packed = pack(rows, trainer.packing_cfg)
    assert packed is not None
    # The update's parts, timed apart on the last batch (each program warmed once first).
    for name, ref in (("reference_s", True), ("policy_fwd_s", False)):
        trainer.logprobs(packed, reference=ref)
        t = time.perf_counter()
        trainer.logprobs(packed, reference=ref)
        split[name] = time.perf_counter() - t
    split["backward_optimizer_s"] = split["update_s"] - split["reference_s"] - split["policy_fwd_s"]
    ops = update_ops(lambda: trainer.update_packed(packed, "rl"))
    weights = sum(x.size for x in jax.tree.leaves(nnx.state(trainer.model, nnx.Param)))
    positions = sum(rows * length for rows, length in packed.shapes)
    forwards = 4 if mode == "full" else 3  # reference + policy + backward (2 or 1 forwards)
    return {
        "update_flops": 2.0 * weights * positions * forwards,
        "ops": ops,
        "step_s": times[-1],
        "compile_s": times[0] - times[-1],
        "split": {k: round(v, 2) for k, v in split.items()},
        "shapes": packed.shapes,
        "padding_waste": packed.padding_waste,
    }


def update_ops(run, top: int = 8) -> dict[str, float]:
    """Milliseconds per kind of XLA op in one traced `run()` (warmed up before)."""
    jax.block_until_ready(run())
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        jax.block_until_ready(run())
        jax.profiler.stop_trace()
        (trace,) = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)
        events = json.load(gzip.open(trace))["traceEvents"]
    ms: dict[str, float] = defaultdict(float)
    for e in events:
        name = e.get("name", "")
        # XLA's ops only: not Python frames ($...), host calls (f(...)), runtime spans (A::B).
        host = name.startswith(("$", "end:")) or "::" in name or "(" in name
        if e.get("ph") == "X" and not host:
            ms[re.sub(r"[.\d]+$", "", name)] += e.get("dur", 0) / 1e3
    return {k: round(v, 1) for k, v in sorted(ms.items(), key=lambda kv: -kv[1])[:top]}


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    """The median rate of a jitted f32 n x n matmul: what this CPU gives a large dense matmul."""
    x = jax.random.normal(jax.random.key(0), (n, n), np.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(x).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times)) / 1e9


# --------------------------------------------------------------------------- TRL
def trl(mode: str, folder: str, texts: list[str], steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer  # pyright: ignore[reportPrivateImportUsage]

    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    peft_config = None
    if mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, bias="none"
        )
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=K,
            num_generations=K,
            max_completion_length=NEW_TOKENS,
            generation_kwargs={"min_new_tokens": NEW_TOKENS},
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            beta=BETA,
            learning_rate=LR,
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            max_steps=steps,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            bf16=False,
            fp16=False,
            shuffle_dataset=False,
            seed=0,
            disable_dropout=True,
        )
        data = Dataset.from_dict({"prompt": [texts[i % len(texts)] for i in range(steps)]})
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,  # pyright: ignore[reportArgumentType]
            args=args,
            train_dataset=data,
            processing_class=tok,
            peft_config=peft_config,
        )
        parts: dict[str, float] = defaultdict(float)

        def timed(fn, key_of):
            def wrapper(*a, **kw):
                t = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    parts[key_of()] += time.perf_counter() - t

            return wrapper

        trainer._generate_single_turn = timed(trainer._generate_single_turn, lambda: "generation_s")
        trainer._get_per_token_logps_and_entropies = timed(
            trainer._get_per_token_logps_and_entropies,
            lambda: "policy_fwd_s" if torch.is_grad_enabled() else "reference_s",
        )
        trainer._calculate_rewards = timed(trainer._calculate_rewards, lambda: "reward_s")
        steps_t: list[float] = []
        splits: list[dict] = []

        class Clock(TrainerCallback):
            def on_step_begin(self, *a, **kw):
                parts.clear()
                self.t = time.perf_counter()

            def on_step_end(self, *a, **kw):
                steps_t.append(time.perf_counter() - self.t)
                splits.append(dict(parts))

        trainer.add_callback(Clock())
        trainer.train()
    split = dict(splits[-1])
    split["backward_optimizer_s"] = steps_t[-1] - sum(split.values())
    return {"step_s": steps_t[-1], "split": {k: round(v, 2) for k, v in split.items()}}


def main():
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--modes", default="full,lora")
    ap.add_argument("--steps", type=int, default=3, help="steps per side; the last is timed")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--attention", default="dense", help="our model.attention_impl")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    model, tok = load_checkpoint(MODEL)
    texts = prompts(tok)
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(model, tok, folder)
        del model
        for mode in args.modes.split(","):
            a = ours(mode, texts, args.steps, args.attention)
            b = trl(mode, folder, texts, args.steps)
            peak = matmul_gflops()
            update_s, gen_s = a["split"]["update_s"], a["split"]["generation_s"]
            line = {
                "bench": "grpo_vs_trl",
                "mode": mode,
                "ours_step_s": round(a["step_s"], 2),
                "trl_step_s": round(b["step_s"], 2),
                "ratio": round(a["step_s"] / b["step_s"], 3),
                "ours_split": a["split"],
                "trl_split": b["split"],
                "ours_compile_s": round(a["compile_s"], 1),
                "ours_micro_batch_shapes": a["shapes"],
                "ours_padding_waste": round(a["padding_waste"], 3),
                "ours_update_ops": a["ops"],
                "matmul_gflops": round(peak, 1),
                "ours_update_gflops": round(a["update_flops"] / update_s / 1e9, 1),
                "floor_ratio": round((gen_s + a["update_flops"] / peak / 1e9) / b["step_s"], 3),
                "group": K,
                "completion_tokens": NEW_TOKENS,
                "kl_beta": BETA,
                "attention_impl": args.attention,
                "torch_threads": args.threads,
                "load": round(os.getloadavg()[0], 1),
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
