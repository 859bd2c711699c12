"""Sampler benchmark against transformers `generate`; prints one JSON line per batch size.

    python benchmarks/sampler.py [--batch-sizes 1,8,32] [--new-tokens 128] [--repeats 2]

Both sides run the embedded default model (SmolLM2-135M-Instruct, f32, from the same GGUF file)
on the same chat prompts, greedy, producing exactly `--new-tokens` tokens per row: our sampler
with no EOS ids, HF with `min_new_tokens` = `max_new_tokens`. torch uses `--threads` threads;
XLA uses its default pool on the same cores. Each side is warmed up once, then timed
`--repeats` times, alternating, and its best time is kept. Keys:
  batch            rows decoded together
  jax_tok_s        generated tokens per second of `SamplerSession.start` + `decode`
                   (prefill included)
  hf_tok_s         the same for `AutoModelForCausalLM.generate` (left-padded batch)
  ratio            jax_tok_s / hf_tok_s
  achieved_gflops  useful model FLOPs per second of our sampler: 2 x matmul params per token
                   (layers and LM head) plus causal attention, prefill and decode
  roof_gflops      a jitted f32 [2048 x 2048] matmul measured in the same run
  dot_floor_tok_s  tokens/s if a decode step cost nothing but its weight matmuls: the model's
                   own dense dots (every layer's projections and the LM head, same weights,
                   same layouts) jitted as one chain at this batch size
  ceiling_ratio    dot_floor_tok_s / hf_tok_s: the best ratio any sampler built on XLA's CPU
                   dots could reach on this machine
  compiles         sampler programs compiled for this batch size (warm-up included)
  greedy_equal     fraction of rows whose tokens equal HF's up to our first EOS (past it HF
                   is forced off EOS by min_new_tokens, so the two may differ)
  prompt_tokens    mean prompt length
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from agemem_jax.chat import ChatFormat
from agemem_jax.models import load_checkpoint, resolve_path
from agemem_jax.sampler import SamplerSession, compile_count

MODEL = "smollm2-135m-instruct"
SYSTEM = "You are a helpful assistant."
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about memory.",
    "Explain photosynthesis in simple terms.",
    "Give me three tips for learning a new language.",
    "What causes the seasons on Earth?",
    "Describe a cat to someone who has never seen one.",
    "How do I make a cup of tea?",
    "Summarize the plot of Romeo and Juliet.",
    "Why is the sky blue?",
    "List five fruits that are red.",
    "What is a prime number?",
    "Write a short poem about the sea.",
    "How does a bicycle work?",
    "What is the difference between weather and climate?",
    "Tell me a fun fact about octopuses.",
    "Explain what a computer program is.",
    "What should I pack for a weekend trip?",
    "How do plants drink water?",
    "Describe the water cycle.",
    "What is gravity?",
    "Give me a recipe for a simple salad.",
    "Why do we need sleep?",
    "What is the tallest mountain in the world?",
    "Explain how a rainbow forms.",
    "Write a two-sentence story about a dragon.",
    "What are the planets of the solar system?",
    "How do bees make honey?",
    "What is the boiling point of water?",
    "Describe a busy city street.",
    "What is machine learning?",
    "How can I save money each month?",
    "Why do leaves change color in autumn?",
]


def chat_prompts(fmt: ChatFormat, n: int) -> list[list[int]]:
    qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    return [
        fmt.conversation([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
        for q in qs
    ]


def matmul_roof(n: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def dot_floor(model, batch: int, repeats: int = 5, steps: int = 10) -> float:
    """Seconds per decode step spent in the weight matmuls alone (see `ceiling_ratio`).

    Each layer's seven projections and the LM head run in the model's own einsum forms on
    [batch, hidden] activations. Every output feeds the next input, so nothing is skipped or
    reordered, and the chain streams all weights once per step, as decoding does.
    """
    cfg, dt = model.cfg, model.cfg.dtype
    if cfg.scan_layers:
        raise ValueError("dot_floor expects an unscanned model, as the sampler benchmark loads")
    weights = [
        (
            blk.attn.q_proj.value,
            blk.attn.k_proj.value,
            blk.attn.v_proj.value,
            blk.attn.o_proj.value,
            blk.mlp.gate_proj.value,
            blk.mlp.up_proj.value,
            blk.mlp.down_proj.value,
        )
        for blk in model.layers
    ]
    head = model.embed.value if cfg.tie_word_embeddings else model.lm_head.value

    @jax.jit
    def step(x, weights, head):
        for q, k, v, o, gate, up, down in weights:
            qh = jnp.einsum("bd,dnh->bnh", x, q)
            kh = jnp.einsum("bd,dnh->bnh", x, k)
            vh = jnp.einsum("bd,dnh->bnh", x, v)
            x = x + qh.reshape(x.shape[0], -1) @ o.reshape(-1, x.shape[1])
            x = x + 1e-6 * (kh.sum((1, 2)) + vh.sum((1, 2)))[:, None]
            x = x + (jax.nn.silu(x @ gate) * (x @ up)) @ down
        logits = x @ head.T if cfg.tie_word_embeddings else x @ head
        return logits.max(-1)

    x = jnp.ones((batch, cfg.hidden_size), dt)
    step(x, weights, head).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            out = step(x, weights, head)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t) / steps)
    return best


def model_flops(cfg, prompt_lens: list[int], new_tokens: int) -> float:
    """Useful FLOPs of prefill + decode: 2 x matmul params per token plus causal attention."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    per_layer = d * hd * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * d * f
    matmul_params = cfg.num_layers * per_layer + d * cfg.vocab_size
    total = 0.0
    for p in prompt_lens:
        n = p + new_tokens
        total += 2 * matmul_params * (p + new_tokens - 1)
        # Scores and values: 2 matmuls x 2 FLOPs x heads x head_dim per (query, key) pair.
        total += 4 * cfg.num_layers * cfg.num_heads * hd * (n * (n + 1) / 2)
    return total


def run_jax(session: SamplerSession, prompts, new_tokens: int) -> tuple[float, list[list[int]]]:
    t = time.perf_counter()
    session.start(prompts)
    outs = session.decode(new_tokens)
    return time.perf_counter() - t, [o.tokens for o in outs]


def run_hf(hf, prompts, new_tokens: int, pad_id: int) -> tuple[float, list[list[int]]]:
    import torch

    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    t = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=pad_id,
        )
    return time.perf_counter() - t, out[:, width:].tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    model, tokenizer = load_checkpoint(MODEL)
    path = resolve_path(MODEL)
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    fmt = ChatFormat(tokenizer)
    eos = set(fmt.stop_ids)
    roof = matmul_roof()

    for b in (int(x) for x in args.batch_sizes.split(",")):
        prompts = chat_prompts(fmt, b)
        before = compile_count()
        session = SamplerSession(model, tokenizer, batch_size=b, eos_ids=())
        run_jax(session, prompts, args.new_tokens)  # compile + warm up
        run_hf(hf, prompts, args.new_tokens, fmt.im_end)
        jax_s, hf_s = [], []
        for _ in range(args.repeats):
            t, ours = run_jax(session, prompts, args.new_tokens)
            jax_s.append(t)
            t, theirs = run_hf(hf, prompts, args.new_tokens, fmt.im_end)
            hf_s.append(t)
        equal = []
        for a, h in zip(ours, theirs, strict=True):
            n = next((i for i, t in enumerate(a) if t in eos), len(a))
            equal.append(a[:n] == h[:n])
        tokens = b * args.new_tokens
        floor_tok_s = b / dot_floor(model, b)
        jax_tok_s, hf_tok_s = tokens / min(jax_s), tokens / min(hf_s)
        flops = model_flops(model.cfg, [len(p) for p in prompts], args.new_tokens)
        line = dict(
            batch=b,
            jax_tok_s=round(jax_tok_s, 1),
            hf_tok_s=round(hf_tok_s, 1),
            ratio=round(jax_tok_s / hf_tok_s, 2),
            achieved_gflops=round(flops / min(jax_s) / 1e9, 1),
            roof_gflops=round(roof, 1),
            dot_floor_tok_s=round(floor_tok_s, 1),
            ceiling_ratio=round(floor_tok_s / hf_tok_s, 2),
            compiles=compile_count() - before,
            greedy_equal=round(float(np.mean(equal)), 3),
            prompt_tokens=round(float(np.mean([len(p) for p in prompts])), 1),
        )
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
