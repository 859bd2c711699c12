"""One agentic episode shape: our ragged-continuation session against re-prefilling `generate`.

    python benchmarks/multiturn.py [--turns 20] [--obs-tokens 60] [--new-tokens 40] [--batch 8]

Each of `--batch` rows starts from a chat prompt; every turn appends a `--obs-tokens`
observation (a tool result) to each row and then decodes exactly `--new-tokens` tokens greedily
(no EOS can end a turn). Ours: one `SamplerSession`, `append` then `decode` per turn; the KV
cache keeps every earlier token, so a turn computes only its new tokens. Reference: HF
`generate` re-run on the whole conversation every turn (left-padded batch), which is what a tool
loop around `generate` does: every turn re-prefills everything before it. Ours is warmed on one
whole episode first (compilation), the reference on two turns. One JSON line; keys:
  ours_s, reprefill_s    wall time of the whole episode
  ours_pow2_s            ours again with the cache grown by doubling only (slot_step past the
                         longest row), against our default growth in `slot_step` steps
  speedup                reprefill_s / ours_s (target >= 3)
  ours_prefill_tokens    tokens our prefill computed (prompt + every observation + the pending
                         last token of each turn)
  reprefill_prefill_tokens  tokens the re-prefilling loop fed through prefill, padding included
  ours_cold_s, cold_speedup  our first episode of this shape, compilation included (the
                         warm-up), and reprefill_s over it
  ours_cold_compiles     sampler programs compiled by then (the model's load included)
  ours_compiles          sampler programs compiled during the timed episode (warm-up excluded)
  ours_compiles_total    all sampler programs this process compiled
  final_context          tokens per row at the end
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from agemem_jax.chat import ChatFormat
from agemem_jax.models import load_checkpoint, resolve_path
from agemem_jax.sampler import SamplerSession, SamplingParams, compile_count

MODEL = "smollm2-135m-instruct"
OBSERVATION = (
    "<tool_response>Retrieved memory: the Eiffel Tower is in Paris, on the Champ de Mars; it "
    "was finished in 1889 for the World's Fair and is 330 metres tall. Another entry notes "
    "that Gustave Eiffel's company built it, and that it was the tallest structure until "
    "1930.</tool_response>"
)


def observation(tok, n: int) -> list[int]:
    ids = tok.encode(OBSERVATION, add_special_tokens=False)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def start_prompts(tok, batch: int) -> list[list[int]]:
    chat = ChatFormat(tok)
    return [
        chat.conversation([{"role": "user", "content": f"Task {i}: plan the next memory action."}])
        for i in range(batch)
    ]


def ours(
    model, tok, prompts, obs, turns: int, new: int, **session_kw
) -> tuple[float, int, list[list[int]]]:
    t = time.perf_counter()
    session = SamplerSession(
        model, tok, batch_size=len(prompts), eos_ids=(), max_len=8192, **session_kw
    )
    session.start(prompts)
    prefilled = sum(len(p) for p in prompts)
    convo = [list(p) for p in prompts]
    for turn in range(turns):
        if turn:
            session.append({r: obs for r in range(len(prompts))})
            prefilled += len(prompts) * (len(obs) + 1)  # + the pending token of the last turn
            for c in convo:
                c.extend(obs)
        outs = session.decode(new, SamplingParams())
        for c, o in zip(convo, outs, strict=True):
            assert o is not None and len(o.tokens) == new
            c.extend(o.tokens)
    return time.perf_counter() - t, prefilled, convo


def reprefill(hf, prompts, obs, turns: int, new: int) -> tuple[float, int]:
    import torch

    t = time.perf_counter()
    convo = [list(p) for p in prompts]
    prefilled = 0
    for turn in range(turns):
        if turn:
            for c in convo:
                c.extend(obs)
        width = max(len(c) for c in convo)
        ids = torch.zeros((len(convo), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, c in enumerate(convo):
            ids[i, width - len(c) :] = torch.tensor(c)
            mask[i, width - len(c) :] = 1
        prefilled += ids.numel()
        with torch.no_grad():
            out = hf.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                do_sample=False, pad_token_id=0,
            )  # fmt: skip
        for i, c in enumerate(convo):
            c.extend(out[i, width:].tolist())
    return time.perf_counter() - t, prefilled


def main():
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--obs-tokens", type=int, default=60)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model, tok = load_checkpoint(MODEL)
    gguf = resolve_path(MODEL)
    hf = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    prompts = start_prompts(tok, args.batch)
    obs = observation(tok, args.obs_tokens)

    # Warm-up. Ours: one whole episode, so every cache size the timed episode reaches is
    # compiled (a training run replays the same shapes every step); its time is `ours_cold_s`.
    # The re-prefilling loop has nothing to compile: two turns warm its allocator.
    cold_s = ours(model, tok, prompts, obs, args.turns, args.new_tokens)[0]
    cold_compiles = compile_count()
    reprefill(hf, prompts, obs, 2, args.new_tokens)
    before = compile_count()
    ours_s, ours_tokens, convo = ours(model, tok, prompts, obs, args.turns, args.new_tokens)
    compiles = compile_count() - before
    # Doubling only: every cache size it reaches (powers of two) the default growth compiled.
    pow2_s = ours(model, tok, prompts, obs, args.turns, args.new_tokens, slot_step=8192)[0]
    hf_s, hf_tokens = reprefill(hf, prompts, obs, args.turns, args.new_tokens)
    print(
        json.dumps(
            {
                "bench": "multiturn",
                "turns": args.turns,
                "batch": args.batch,
                "obs_tokens": args.obs_tokens,
                "new_tokens": args.new_tokens,
                "ours_s": round(ours_s, 2),
                "reprefill_s": round(hf_s, 2),
                "speedup": round(hf_s / ours_s, 2),
                "ours_pow2_s": round(pow2_s, 2),
                "pow2_speedup": round(hf_s / pow2_s, 2),
                "ours_cold_s": round(cold_s, 2),
                "cold_speedup": round(hf_s / cold_s, 2),
                "ours_cold_compiles": cold_compiles,
                "ours_prefill_tokens": ours_tokens,
                "reprefill_prefill_tokens": hf_tokens,
                "ours_compiles": compiles,
                "ours_compiles_total": compile_count(),
                "final_context": int(np.mean([len(c) for c in convo])),
                "torch_threads": args.threads,
                "load": round(os.getloadavg()[0], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
