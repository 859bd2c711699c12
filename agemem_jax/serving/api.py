"""The OpenAI-compatible HTTP API (Starlette app via FastAPI) over the continuous-batching engine.

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (n, stop, seed, temperature, top_p,
max_tokens, SSE streaming, logprobs, tools/tool_choice, response_format json_object and
json_schema) and `POST /v1/embeddings` (MiniLM). Errors use the API's JSON shape
`{"error": {"message", "type", "param", "code"}}`: malformed JSON or a bad field 400, a prompt
over the limit 400 with its token count, a wrong key 401, an unknown model 404, a body over the
limit 413. Nothing a client sends can stop the server.

Tool calls follow the ChatML convention of the backbone family: the tools' schemas are listed
in the system prompt and a call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
With `tool_choice` "required" or a named function the reply is constrained to exactly that;
with "auto" the model may answer or call, and calls in its text are returned as `tool_calls`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from starlette.requests import Request as HTTPRequest

from agemem_jax import prompts
from agemem_jax.chat import ChatFormat
from agemem_jax.sampler import SamplingParams
from agemem_jax.serving.engine import Engine, Event, Request, ServeConfig
from agemem_jax.serving.grammar import (
    Constraint,
    GrammarError,
    json_schema_grammar,
    tool_call_grammar,
)

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
_TOOL_CALL = re.compile(re.escape(TOOL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CLOSE), re.S)


class APIError(Exception):
    """A client error, reported in the API's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code,
        )  # fmt: skip

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}  # fmt: skip


def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


# ---------------------------------------------------------------------------- request parsing
def _field(body: dict, name: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise _bad(f"'{name}' has the wrong type", name)
    if not isinstance(value, kinds):
        raise _bad(f"'{name}' has the wrong type", name)
    return value


def _content_text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad(f"{where}: only text content parts are supported", "messages")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise _bad(f"{where}: content must be a string or a list of text parts", "messages")


def _tools(body: dict) -> list[dict[str, Any]]:
    tools = _field(body, "tools", list, [])
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
            raise _bad(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", "tools")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _bad(f"tools[{i}].function.name is required", "tools")
        params = fn.get("parameters") or {"type": "object"}
        if not isinstance(params, dict):
            raise _bad(f"tools[{i}].function.parameters must be a JSON schema object", "tools")
        out.append({"name": fn["name"], "description": fn.get("description", ""),
                    "parameters": params})  # fmt: skip
    return out


def _messages(body: dict, tools: list[dict[str, Any]]) -> list[dict[str, str]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}] needs a role", "messages")
        role = {"developer": "system", "function": "tool"}.get(m["role"], m["role"])
        if role not in ("system", "user", "assistant", "tool"):
            raise _bad(f"messages[{i}]: unknown role {m['role']!r}", "messages")
        text = _content_text(m.get("content"), f"messages[{i}]")
        for call in m.get("tool_calls") or []:
            fn = call.get("function", {}) if isinstance(call, dict) else {}
            try:
                args = json.loads(fn.get("arguments") or "{}")
            except (json.JSONDecodeError, TypeError):
                args = fn.get("arguments")
            text += TOOL_OPEN + json.dumps({"name": fn.get("name"), "arguments": args}) + TOOL_CLOSE
        out.append({"role": role, "content": text})
    if tools:
        listing = "\n".join(json.dumps({"type": "function", "function": t}) for t in tools)
        note = prompts.SERVE_TOOLS.format(listing=listing, open=TOOL_OPEN, close=TOOL_CLOSE)
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + note}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


def _tool_choice(body: dict, tools: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """("none" | "auto" | "required", the tools a required call may use)."""
    choice = body.get("tool_choice", "auto" if tools else "none")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _bad(
                f"tool_choice {choice!r}: use none, auto, required or a function", "tool_choice"
            )
        if choice != "none" and not tools:
            raise _bad(f"tool_choice {choice!r} needs tools", "tool_choice")
        return choice, tools
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    named = [t for t in tools if t["name"] == name]
    if not named:
        raise _bad(f"tool_choice names a function not in tools: {name!r}", "tool_choice")
    return "required", named


def _response_format(body: dict) -> str | None:
    """The grammar a response_format asks for, if any."""
    fmt = _field(body, "response_format", dict)
    if fmt is None or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return json_schema_grammar(None)
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _bad("response_format.json_schema.schema must be an object", "response_format")
        try:
            return json_schema_grammar(schema)
        except GrammarError as e:
            raise _bad(str(e), "response_format") from None
    raise _bad(f"response_format type {fmt['type']!r} is not supported", "response_format")


# ---------------------------------------------------------------------------- the server
class Server:
    """The engine, the tokenizer's chat format and the embedder behind the app."""

    def __init__(self, engine: Engine, cfg: ServeConfig, model_name: str, embedder=None):
        self.engine, self.cfg, self.model_name = engine, cfg, model_name
        self.session = engine.session
        self.chat = ChatFormat(engine.tokenizer)
        self.embedder = embedder
        self._embed_lock = threading.Lock()
        self.created = int(time.time())
        self.stats: collections.Counter[str] = collections.Counter()  # requests by feature

    # -------------------------------------------------------------- chat
    def _check_model(self, body: dict, kind: str) -> str:
        name = body.get("model")
        wanted = self.model_name if kind == "chat" else self.cfg.embedding_model
        if not isinstance(name, str):
            raise _bad("'model' is required", "model")
        if name != wanted:
            raise APIError(404, f"The model '{name}' does not exist (this server has '{wanted}')",
                           param="model", code="model_not_found")  # fmt: skip
        return name

    def prepare_chat(self, body: dict) -> tuple[list[Request], dict[str, Any]]:
        """Validate a chat request and build its Requests (one per choice); sinks set later."""
        self._check_model(body, "chat")
        tools = _tools(body)
        choice, callable_tools = _tool_choice(body, tools)
        messages = _messages(body, tools if choice != "none" else [])
        prompt = self.chat.conversation(messages)
        limit = min(self.cfg.max_prompt_tokens, self.session.max_len - 1)
        if len(prompt) > limit:
            raise APIError(400, f"This model's maximum prompt length is {limit} tokens. However, "
                           f"your messages resulted in {len(prompt)} tokens.",
                           param="messages", code="context_length_exceeded")  # fmt: skip
        temperature = float(_field(body, "temperature", (int, float), 1.0))
        top_p = float(_field(body, "top_p", (int, float), 1.0))
        if not 0 <= temperature <= 2:
            raise _bad("temperature must be in [0, 2]", "temperature")
        if not 0 < top_p <= 1:
            raise _bad("top_p must be in (0, 1]", "top_p")
        asked = _field(body, "max_completion_tokens", int) or _field(body, "max_tokens", int)
        if asked is not None and asked < 1:
            raise _bad("max_tokens must be >= 1", "max_tokens")
        max_tokens = min(asked or self.cfg.max_output_tokens, self.cfg.max_output_tokens,
                         self.session.max_len - len(prompt))  # fmt: skip
        n = _field(body, "n", int, 1)
        if not 1 <= n <= self.cfg.max_n:
            raise _bad(f"n must be in [1, {self.cfg.max_n}]", "n")
        stop = _field(body, "stop", (str, list), [])
        stop = [stop] if isinstance(stop, str) else stop
        if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise _bad("stop must be a non-empty string or a list of up to 4", "stop")
        seed = _field(body, "seed", int)
        grammar = None
        if choice == "required":
            try:
                grammar = tool_call_grammar(callable_tools, TOOL_OPEN, TOOL_CLOSE)
            except GrammarError as e:
                raise _bad(str(e), "tools") from None
        elif (fmt := _response_format(body)) is not None:
            grammar = fmt
        if grammar is not None:
            stop = []  # a structured reply ends where its grammar does
        self.stats["chat"] += 1
        self.stats["tool_choice_" + choice] += bool(tools)
        self.stats["response_format_" + str((body.get("response_format") or {}).get("type"))] += 1
        reqs = []
        for i in range(n):
            constraint = None
            if grammar is not None:
                try:
                    constraint = Constraint(grammar, self.session.tokenizer,
                                            self.session.cfg.vocab_size, self.session.eos_ids)  # fmt: skip
                except GrammarError as e:
                    raise _bad(str(e), "response_format") from None
            reqs.append(Request(
                prompt=prompt, max_tokens=max_tokens,
                sampling=SamplingParams(temperature=temperature, top_p=top_p),
                sink=lambda e: None, stop=tuple(stop),
                seed=None if seed is None else seed + i, constraint=constraint,
            ))  # fmt: skip
        options = dict(
            stream=bool(_field(body, "stream", bool, False)),
            logprobs=bool(_field(body, "logprobs", bool, False)),
            tools=bool(tools) and choice != "none",
            include_usage=bool(
                (_field(body, "stream_options", dict, {}) or {}).get("include_usage")
            ),
            prompt_tokens=len(prompt),
        )
        return reqs, options

    def logprob_entries(self, tokens: list[int], logprobs: list[float]) -> list[dict]:
        out = []
        for t, lp in zip(tokens, logprobs, strict=True):
            text = self.chat.decode([t])
            out.append({"token": text, "logprob": float(lp),
                        "bytes": list(text.encode("utf-8")), "top_logprobs": []})  # fmt: skip
        return out

    # -------------------------------------------------------------- embeddings
    def embed(self, body: dict) -> dict[str, Any]:
        self._check_model(body, "embedding")
        if self.embedder is None:
            raise APIError(404, "this server has no embedding model", code="model_not_found")
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(x, str) for x in inputs)
        ):
            raise _bad("input must be a string or a non-empty list of strings", "input")
        dims = _field(body, "dimensions", int)
        if dims is not None and dims != self.embedder.dim:
            raise _bad(f"dimensions must be {self.embedder.dim} for this model", "dimensions")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise _bad("encoding_format must be float or base64", "encoding_format")
        self.stats["embeddings"] += 1
        with self._embed_lock:
            vectors = np.asarray(self.embedder.encode(inputs), np.float32)
        data = []
        for i, v in enumerate(vectors):
            emb = (
                base64.b64encode(v.astype("<f4").tobytes()).decode()
                if fmt == "base64"
                else v.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n_tok = sum(len(t) for t in self.embedder.token_ids(inputs)) if hasattr(
            self.embedder, "token_ids") else 0  # fmt: skip
        return {"object": "list", "data": data, "model": self.cfg.embedding_model,
                "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}}  # fmt: skip


def _finish(
    reason: str | None, text: str, tools: bool
) -> tuple[str | None, str | None, list | None]:
    """(finish_reason, content, tool_calls) of a finished choice in the API's terms."""
    if reason == "error":
        return reason, text, None
    calls = []
    if tools:
        for i, m in enumerate(_TOOL_CALL.finditer(text)):
            try:
                call = json.loads(m.group(1))
            except json.JSONDecodeError:
                continue
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                continue
            calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "index": i,
                          "function": {"name": call["name"],
                                       "arguments": json.dumps(call.get("arguments", {}))}})  # fmt: skip
    if calls:
        return "tool_calls", _TOOL_CALL.sub("", text).strip() or None, calls
    return reason, text, None


def create_app(server: Server):
    """The ASGI app. Run it with uvicorn (`experiments/serve.py`, or `BackgroundServer`)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="agemem_jax", docs_url=None, redoc_url=None, openapi_url=None)
    cfg = server.cfg

    @app.exception_handler(APIError)
    async def _api_error(_, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_, e: StarletteHTTPException):
        err = APIError(
            e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None
        )
        return JSONResponse(err.body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_, e: RequestValidationError):
        return JSONResponse(_bad(str(e)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _internal(_, e: Exception):
        err = APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error")
        return JSONResponse(err.body(), status_code=500)

    async def read_json(request: HTTPRequest) -> dict:
        if cfg.api_key:
            auth = request.headers.get("authorization", "")
            if auth != f"Bearer {cfg.api_key}":
                raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            raise APIError(413, f"request body over {cfg.max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_body_bytes:
                raise APIError(413, f"request body over {cfg.max_body_bytes} bytes")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _bad(f"malformed JSON: {e}") from None
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object")
        return body

    def check_key(request: HTTPRequest) -> None:
        if cfg.api_key and request.headers.get("authorization", "") != f"Bearer {cfg.api_key}":
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        check_key(request)
        names = [server.model_name] + ([cfg.embedding_model] if server.embedder else [])
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": server.created, "owned_by": "agemem_jax"}
            for n in names]}  # fmt: skip

    @app.post("/v1/embeddings")
    async def embeddings(request: HTTPRequest):
        body = await read_json(request)
        return await asyncio.get_running_loop().run_in_executor(None, server.embed, body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        body = await read_json(request)
        reqs, opt = server.prepare_chat(body)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        def sink(i: int) -> Callable[[Event], None]:
            def put(e: Event) -> None:
                loop.call_soon_threadsafe(events.put_nowait, (i, e))

            return put

        for i, r in enumerate(reqs):
            r.sink = sink(i)
            server.engine.submit(r)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": cid, "created": created, "model": server.model_name}

        def cancel_all():
            for r in reqs:
                r.cancel()

        async def next_event() -> tuple[int, Event] | None:
            """The next event, or None once the client has gone."""
            while True:
                try:
                    return await asyncio.wait_for(events.get(), timeout=0.25)
                except TimeoutError:
                    if await request.is_disconnected():
                        return None

        if not opt["stream"]:
            texts, tokens, lps = [""] * len(reqs), [[] for _ in reqs], [[] for _ in reqs]
            reasons: list[str | None] = [None] * len(reqs)
            try:
                while any(r is None for r in reasons):
                    got = await next_event()
                    if got is None:
                        cancel_all()
                        return JSONResponse({}, status_code=499)
                    i, e = got
                    texts[i] += e.text
                    tokens[i] += e.tokens
                    lps[i] += e.logprobs
                    reasons[i] = e.finish_reason or reasons[i]
                    if e.error:
                        raise APIError(500, f"generation failed: {e.error}", "server_error")
            finally:
                cancel_all()  # no-op for finished requests; frees rows if this task is cancelled
            choices = []
            for i in range(len(reqs)):
                reason, content, calls = _finish(reasons[i], texts[i], opt["tools"])
                msg: dict[str, Any] = {"role": "assistant", "content": content}
                if calls:
                    msg["tool_calls"] = [
                        {k: v for k, v in c.items() if k != "index"} for c in calls
                    ]
                choices.append({
                    "index": i, "message": msg, "finish_reason": reason,
                    "logprobs": {"content": server.logprob_entries(tokens[i], lps[i])}
                    if opt["logprobs"] else None,
                })  # fmt: skip
            completion = sum(len(t) for t in tokens)
            return {**head, "object": "chat.completion", "choices": choices,
                    "usage": {"prompt_tokens": opt["prompt_tokens"],
                              "completion_tokens": completion,
                              "total_tokens": opt["prompt_tokens"] + completion}}  # fmt: skip

        async def sse() -> AsyncIterator[str]:
            def chunk(choices, usage=None):
                out = {**head, "object": "chat.completion.chunk", "choices": choices}
                if usage is not None:
                    out["usage"] = usage
                return f"data: {json.dumps(out)}\n\n"

            try:
                for i in range(len(reqs)):
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                  "finish_reason": None, "logprobs": None}])  # fmt: skip
                open_, texts, completion = len(reqs), [""] * len(reqs), 0
                while open_:
                    got = await next_event()
                    if got is None:
                        return
                    i, e = got
                    completion += len(e.tokens)
                    texts[i] += e.text
                    lp = {"content": server.logprob_entries(e.tokens, e.logprobs)} if opt[
                        "logprobs"] else None  # fmt: skip
                    if e.finish_reason is None:
                        if not opt["tools"] and (e.text or lp):
                            yield chunk([{"index": i, "delta": {"content": e.text},
                                          "finish_reason": None, "logprobs": lp}])  # fmt: skip
                        continue
                    open_ -= 1
                    reason, content, calls = _finish(e.finish_reason, texts[i], opt["tools"])
                    delta: dict[str, Any] = {}
                    if opt["tools"]:
                        if content:
                            delta["content"] = content
                        if calls:
                            delta["tool_calls"] = calls
                    elif e.text:
                        delta["content"] = e.text
                    yield chunk([{"index": i, "delta": delta, "finish_reason": reason,
                                  "logprobs": lp}])  # fmt: skip
                if opt["include_usage"]:
                    usage = {"prompt_tokens": opt["prompt_tokens"], "completion_tokens": completion,
                             "total_tokens": opt["prompt_tokens"] + completion}  # fmt: skip
                    yield chunk([], usage)
                yield "data: [DONE]\n\n"
            finally:
                cancel_all()

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip

    return app


def build_server(model, tokenizer, cfg: ServeConfig, model_name: str, embedder=None,
                 *, max_len: int | None = None) -> Server:  # fmt: skip
    """Engine (its own SamplerSession of `cfg.max_rows` rows) + Server, ready for `create_app`."""
    from agemem_jax.sampler import SamplerSession

    if tokenizer is None:
        raise ValueError("serving needs a checkpoint with a tokenizer")
    session = SamplerSession(model, tokenizer, batch_size=cfg.max_rows, max_len=max_len,
                             seed=cfg.seed)  # fmt: skip
    return Server(Engine(session, cfg), cfg, model_name, embedder)


class BackgroundServer(contextlib.AbstractContextManager):
    """uvicorn serving `app` on a loopback port from a thread (tests, benchmarks, cross-checks).

    with BackgroundServer(create_app(server)) as url:   # url = "http://127.0.0.1:PORT/v1"
        ...
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}/v1"
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
