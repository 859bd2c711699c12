"""Serve a model behind an OpenAI-compatible API (chat completions, embeddings, models).

    python experiments/serve.py --checkpoint=runs/grpo/export --port=8000     # a trained policy
    python experiments/serve.py --checkpoint=smollm2-135m-instruct --api_key=sk-local
    python experiments/serve.py --checkpoint=runs/grpo                         # workdir: its export

Then any OpenAI client works against it:

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="sk-local")
    client.chat.completions.create(model="export", messages=[...])

`--checkpoint` is an HF folder, a .gguf file, an embedded alias, or a training workdir (its
`export/` folder is served). Requests share one sampler batch of `--max_rows` rows
(continuous batching); see `agemem_jax/serving/` for the endpoints and limits.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging

from agemem_jax import cli
from agemem_jax.serving.engine import ServeConfig

_D = ServeConfig()
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "HF folder, .gguf, alias or training workdir."
)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on.")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port).")
_API_KEY = flags.DEFINE_string("api_key", _D.api_key, "Bearer key clients must send (empty: none).")
_MODEL_NAME = flags.DEFINE_string("model_name", _D.model_name, "Model id (empty: checkpoint name).")
_MAX_ROWS = flags.DEFINE_integer("max_rows", _D.max_rows, "Requests decoded concurrently.")
_CHUNK = flags.DEFINE_integer("decode_chunk", _D.decode_chunk, "Tokens per row between admissions.")
_MAX_PROMPT = flags.DEFINE_integer("max_prompt_tokens", _D.max_prompt_tokens, "Prompt limit.")
_MAX_OUTPUT = flags.DEFINE_integer("max_output_tokens", _D.max_output_tokens, "Output limit.")
_MAX_BODY = flags.DEFINE_integer("max_body_bytes", _D.max_body_bytes, "Request body limit.")
_MAX_N = flags.DEFINE_integer("max_n", _D.max_n, "Most choices (n) per request.")
_SEED = flags.DEFINE_integer("seed", _D.seed, "Seed of requests that bring none.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype (bfloat16 on accelerators).")
_EMBEDDINGS = flags.DEFINE_bool("embeddings", True, "Serve /v1/embeddings with MiniLM.")


def resolve_checkpoint(path: str) -> str:
    """A training workdir stands for its exported policy."""
    p = Path(path)
    if (
        p.is_dir()
        and not (p / "config.json").is_file()
        and (p / "export" / "config.json").is_file()
    ):
        return str(p / "export")
    return path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import uvicorn

    from agemem_jax.models import LoadConfig, load
    from agemem_jax.serving.api import build_server, create_app

    checkpoint = resolve_checkpoint(cli.required(_CHECKPOINT))
    name = _MODEL_NAME.value or Path(checkpoint).name
    cfg = ServeConfig(
        max_rows=_MAX_ROWS.value, decode_chunk=_CHUNK.value, max_prompt_tokens=_MAX_PROMPT.value,
        max_output_tokens=_MAX_OUTPUT.value, max_body_bytes=_MAX_BODY.value, max_n=_MAX_N.value,
        seed=_SEED.value, model_name=name, api_key=_API_KEY.value,
    )  # fmt: skip
    model, tokenizer = load(LoadConfig(checkpoint=checkpoint, dtype=_DTYPE.value))
    embedder = None
    if _EMBEDDINGS.value:
        from agemem_jax.encoder import MiniLMEncoder

        embedder = MiniLMEncoder()
    server = build_server(model, tokenizer, cfg, name, embedder)
    logging.info("serving %s as %r on http://%s:%d/v1", checkpoint, name, _HOST.value, _PORT.value)
    try:
        uvicorn.run(create_app(server), host=_HOST.value, port=_PORT.value, log_level="info")
    finally:
        server.engine.close()


if __name__ == "__main__":
    cli.run(main)
