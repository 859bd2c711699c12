"""The official memory packages (mem0ai, langmem) run against our server, and the agreement
metric of the cross-check. Fast tier: a tiny random model behind the server, so the packages'
whole request path runs (an untrained model extracts nothing meaningful); the embedded-model
run on 10 conversations is `slow`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agemem_jax import crosscheck as cc
from agemem_jax.data.hotpotqa import SHARED_SAMPLE
from agemem_jax.encoder import MiniLMEncoder

needs_data = pytest.mark.skipif(not SHARED_SAMPLE.is_file(), reason=f"{SHARED_SAMPLE} is absent")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder():
    return MiniLMEncoder()


@pytest.fixture(scope="module")
def served(encoder):
    from agemem_jax.models import LoadConfig, load
    from agemem_jax.serving.api import BackgroundServer, build_server, create_app
    from agemem_jax.serving.engine import ServeConfig

    model, tokenizer = load(LoadConfig(random="tiny"))
    cfg = ServeConfig(max_rows=4, model_name="tiny", max_output_tokens=24)
    server = build_server(model, tokenizer, cfg, "tiny", encoder, max_len=4096)
    with BackgroundServer(create_app(server)) as url:
        yield server, cc.Endpoint(url, "tiny", max_tokens=24)
    server.engine.close()


def test_agreement_is_the_embedding_match_rate(encoder):
    a = ["Paris is the capital of France.", "The Nile flows through Egypt."]
    same = cc.agreement(a, list(a), encoder)
    assert same["match_rate"] == 1.0 and same["mean_best_cos"] == pytest.approx(1.0, abs=1e-5)
    part = cc.agreement(a, ["France's capital city is Paris.", "I had tea at noon."], encoder)
    assert part["a_matched"] == 1 and part["b_matched"] == 1 and part["match_rate"] == 0.5
    assert cc.agreement([], [], encoder)["match_rate"] == 1.0
    assert cc.agreement(a, [], encoder)["match_rate"] == 0.0


@needs_data
def test_stage1_conversations_are_hotpotqa_stage_one():
    convs = cc.stage1_conversations(3, t1=4)
    assert len(convs) == 3 and all(
        len(c) == 4 and all(isinstance(m, str) for m in c) for c in convs
    )


@needs_data
def test_official_mem0_runs_against_the_server(served):
    server, ep = served
    before = dict(server.stats)
    stored = cc.run_mem0(ep, cc.stage1_conversations(2))  # two clients at once, one batch
    assert len(stored) == 2  # completed; an untrained model's facts may not parse
    assert server.stats["response_format_json_object"] > before.get(
        "response_format_json_object", 0
    )
    # Without inference mem0 stores the messages as they are, embedded by our server, and
    # finds them again by similarity.
    os.environ["MEM0_TELEMETRY"] = "False"
    from mem0 import Memory

    memory = Memory.from_config({
        "llm": {"provider": "openai", "config": {"model": ep.model, "openai_base_url": ep.url,
                                                 "api_key": "x"}},
        "embedder": {"provider": "openai", "config": {"model": ep.embedding_model,
                     "openai_base_url": ep.url, "api_key": "x", "embedding_dims": 384}},
        "vector_store": {"provider": "faiss", "config": {"collection_name": "t",
                         "path": str(Path(os.environ.get("TMPDIR", "/tmp")) / f"faiss-{os.getpid()}"),
                         "embedding_model_dims": 384}},
        "history_db_path": ":memory:",
    })  # fmt: skip
    facts = ["Paris is the capital of France.", "The Nile flows through Egypt."]
    for f in facts:
        memory.add([{"role": "user", "content": f}], user_id="u", infer=False)
    hits = memory.search("Which river is in Egypt?", user_id="u", limit=1)["results"]
    assert hits[0]["memory"] == facts[1]
    assert server.stats["embeddings"] >= 3


@pytest.mark.slow  # CI runs the mem0ai path; langmem's import and tool loop take minutes
@needs_data
def test_official_langmem_runs_against_the_server(served):
    server, ep = served
    before = server.stats["tool_choice_required"] + server.stats["tool_choice_auto"]
    stored = cc.run_langmem(ep, cc.stage1_conversations(1))
    assert len(stored) == 1
    assert server.stats["tool_choice_required"] + server.stats["tool_choice_auto"] > before


def test_reimplementations_are_taken_by_name(served, encoder):
    stored = cc.run_reimplementation("mem0", served[1], [["Paris is in France."]], encoder)
    assert len(stored) == 1 and all(isinstance(s, str) for s in stored[0])


@pytest.mark.slow
@needs_data
def test_crosscheck_on_the_embedded_model(tmp_path):
    """10 stage-1 conversations through SmolLM2 behind the server: both official packages
    complete and store entries (and, with the re-implementations present, agree with them)."""
    pairs = ["--reimpl=mem0:mem0,langmem:langmem"]
    out = subprocess.run(
        [sys.executable, "experiments/crosscheck.py", f"--workdir={tmp_path}",
         "--conversations=10", "--max_tokens=256", *pairs],
        cwd=ROOT, capture_output=True, text=True, timeout=5400,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MEM0_TELEMETRY": "False"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    assert {x["official"] for x in lines} == {"mem0", "langmem"}
    report = json.loads((tmp_path / "crosscheck.json").read_text())
    assert len(report["official"]["mem0"]) == 10
    # Both packages did ask the model: mem0 through json_object, LangMem through tools.
    stats = report["server_stats"]
    assert stats.get("response_format_json_object", 0) > 0, stats
    assert stats.get("tool_choice_auto", 0) > 0, stats
    # Fails on SmolLM2-135M (issue 14, blocked): its json_object replies are valid JSON of the
    # wrong shape ({"memory": "<a string>"} where mem0 wants a list), and its LangMem turns
    # create no memory, so neither side stores anything. Storing needs a schema-following model.
    assert all(x["entries"] > 0 for x in lines), lines
