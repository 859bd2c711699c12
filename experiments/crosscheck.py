"""Run the official memory packages against our server, and compare with our re-implementations.

    python experiments/crosscheck.py --workdir=/tmp/cc                       # mem0 + langmem
    python experiments/crosscheck.py --workdir=/tmp/cc --systems=mem0 --conversations=3
    python experiments/crosscheck.py --workdir=/tmp/cc --reimpl=mem0:mem0,langmem:langmem

The server (`agemem_jax.serving`) is started in-process on a loopback port over `--checkpoint`
(or `--random=tiny`); every LLM and embedding call of both sides goes through it. Writes
`crosscheck.json` (stored entries per conversation and agreement numbers) to the workdir and
prints one JSON line per official system.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from absl import app, flags

from agemem_jax import cli

_CHECKPOINT = flags.DEFINE_string("checkpoint", "smollm2-135m-instruct", "Model to serve.")
_RANDOM = flags.DEFINE_string("random", "", "Serve a random model of this shape (tests).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where crosscheck.json goes.")
_SYSTEMS = flags.DEFINE_list("systems", ["mem0", "langmem"], "Official packages to run.")
_REIMPL = flags.DEFINE_list(
    "reimpl", [], "official:ours pairs to compare (ours by name from agemem_jax.baselines)."
)
_CONVERSATIONS = flags.DEFINE_integer("conversations", 10, "HotpotQA stage-1 conversations.")
_T1 = flags.DEFINE_integer("t1", 4, "Messages per stage-1 conversation.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.7, "Cosine similarity at which entries match.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 512, "Output budget of every LLM call.")
_ROWS = flags.DEFINE_integer("rows", 8, "Server rows (concurrent requests).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from agemem_jax import crosscheck as cc
    from agemem_jax.encoder import MiniLMEncoder
    from agemem_jax.models import LoadConfig, load
    from agemem_jax.serving.api import BackgroundServer, build_server, create_app
    from agemem_jax.serving.engine import ServeConfig

    workdir = Path(cli.required(_WORKDIR))
    unknown = set(_SYSTEMS.value) - set(cc.OFFICIAL)
    if unknown:
        raise ValueError(f"--systems: unknown {sorted(unknown)}; choose from {cc.OFFICIAL}")
    pairs = [p.split(":", 1) for p in _REIMPL.value]
    if any(len(p) != 2 or p[0] not in _SYSTEMS.value for p in pairs):
        raise ValueError("--reimpl takes official:ours pairs whose official side is in --systems")
    conversations = cc.stage1_conversations(_CONVERSATIONS.value, _T1.value)
    encoder = MiniLMEncoder()
    model_cfg = LoadConfig(random=_RANDOM.value) if _RANDOM.value else LoadConfig(_CHECKPOINT.value)
    model, tokenizer = load(model_cfg)
    name = _RANDOM.value or Path(_CHECKPOINT.value).name
    cfg = ServeConfig(max_rows=_ROWS.value, model_name=name,
                      max_output_tokens=_MAX_TOKENS.value)  # fmt: skip
    server = build_server(model, tokenizer, cfg, name, encoder, max_len=8192)
    report: dict[str, Any] = dict(checkpoint=name, conversations=conversations, threshold=_THRESHOLD.value,
                  official={}, ours={}, agreement={})  # fmt: skip
    with BackgroundServer(create_app(server)) as url:
        ep = cc.Endpoint(url, name, max_tokens=_MAX_TOKENS.value, parallel=_ROWS.value)
        for system in _SYSTEMS.value:
            t0 = time.perf_counter()
            stored = cc.OFFICIAL_RUNNERS[system](ep, conversations)
            report["official"][system] = stored
            line = dict(official=system, seconds=round(time.perf_counter() - t0, 1),
                        entries=sum(map(len, stored)),
                        conversations_with_entries=sum(bool(s) for s in stored))  # fmt: skip
            for official, ours in pairs:
                if official != system:
                    continue
                t0 = time.perf_counter()
                theirs = cc.run_reimplementation(ours, ep, conversations, encoder)
                report["ours"][ours] = theirs
                per = [cc.agreement(a, b, encoder, _THRESHOLD.value)
                       for a, b in zip(stored, theirs, strict=True)]  # fmt: skip
                hit = sum(p["a_matched"] + p["b_matched"] for p in per)
                tot = sum(p["a_entries"] + p["b_entries"] for p in per)
                report["agreement"][f"{official}:{ours}"] = per
                line.update(ours=ours, ours_entries=sum(map(len, theirs)),
                            ours_seconds=round(time.perf_counter() - t0, 1),
                            match_rate=round(hit / tot, 3) if tot else 1.0)  # fmt: skip
            print(json.dumps(line), flush=True)
        report["server_stats"] = dict(server.stats)
    server.engine.close()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "crosscheck.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    cli.run(main)
