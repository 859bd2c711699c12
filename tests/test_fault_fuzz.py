"""Model output is untrusted input: fuzzing `parse_turn` and the tool dispatcher, and an audit.

Every turn, random or mutated from a well-formed one or drawn from a list of known-hostile
shapes (deep JSON, huge strings, NaN/Infinity, huge integers, duplicate keys, unicode escapes and
lone surrogates, `</tool_call>` inside strings, path-like metadata, a 10 MB Add_memory), goes
through `parse_turn` and then the memory environment's dispatcher. Nothing may raise, every
turn must finish under a fixed time bound, and while they run an audit hook records any attempt
to exec/compile code, start a process, touch the filesystem, unpickle or open a socket.

The CI tier runs 10^4 turns with a fixed seed; the `slow` tier runs 10^5.
"""

from __future__ import annotations

import ast
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import make_tiny_tokenizer

from agemem_jax.chat import ChatFormat
from agemem_jax.encoder import HashEncoder
from agemem_jax.memory_env import MemoryEnv
from agemem_jax.protocol import Turn, format_turn, parse_turn
from agemem_jax.tools import TOOL_NAMES

PACKAGE = Path(__file__).resolve().parents[1] / "agemem_jax"
TURN_SECONDS = 2.0  # bound on one turn, parse and dispatch, on a loaded 2-core CI machine

# Audit events that model output must never cause (see the `sys.audit` events table).
FORBIDDEN = (
    "exec", "compile", "open", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "os.fork", "subprocess.Popen", "os.remove", "os.rename", "os.mkdir", "os.rmdir",
    "shutil.", "pickle.find_class", "marshal.load", "socket.connect", "ctypes.",
    "urllib.Request", "import",
)  # fmt: skip
_audit: dict[str, list] = {"on": [], "seen": []}


def _hook(event: str, args) -> None:
    if _audit["on"] and event.startswith(FORBIDDEN):
        _audit["seen"].append((event, repr(args)[:200]))


sys.addaudithook(_hook)  # hooks cannot be removed; this one only records while switched on

PATHS = ["../../etc/passwd", "/etc/shadow", "~/.ssh/id_rsa", "C:\\Windows\\system32",
         "file:///etc/hosts", "\\\\server\\share", "/dev/zero", "$(rm -rf /)", "`id`",
         "; cat /etc/passwd", "__import__('os').system('id')", "{{7*7}}", "%s%n"]  # fmt: skip


def _valid(rng: random.Random) -> str:
    name = rng.choice([*TOOL_NAMES, "Nope", ""])
    word = lambda: rng.choice(["paris", "river", "</tool_call>", "<answer>", "\u00e9t\u00e9",
                               "\ud83d\ude00", "null", '"', "\\", *PATHS])  # fmt: skip
    args = {
        "Add_memory": {"content": " ".join(word() for _ in range(rng.randint(0, 12))),
                       "metadata": {"path": rng.choice(PATHS), "tags": [word(), word()]}},
        "Update_memory": {"memory_id": rng.choice(["mem_00000001", "../x", ""]),
                          "content": word(), "metadata": {"file": rng.choice(PATHS)}},
        "Delete_memory": {"memory_id": "mem_0000000a", "confirmation": rng.random() < 0.5},
        "Retrieve_memory": {"query": word(), "top_k": rng.choice([1, 3, 10, 11, -1, 10**30]),
                            "metadata_filter": {"path": rng.choice(PATHS)}},
        "Summary_context": {"span": rng.choice(["all", "last 2", "", word()])},
        "Filter_context": {"criteria": word()},
    }.get(name, {"x": word()})  # fmt: skip
    calls = [{"name": name, "arguments": args} for _ in range(rng.choice([1, 1, 2, 9]))]
    if rng.random() < 0.2:
        return format_turn(word(), answer=word())
    return format_turn(word(), calls)


def _hostile(rng: random.Random) -> str:
    """Known-bad shapes, each wrapped in a turn around a <tool_call>."""
    n = rng.choice([10, 100, 5000, 100_000])
    payloads = [
        "[" * n + "]" * n,
        '[{"name": "Add_memory", "arguments": ' + '{"a": ' * n + "1" + "}" * n + "}]",
        '[{"name": "Add_memory", "arguments": {"content": "'
        + "x" * rng.choice([8000, 30000])
        + '"}}]',
        '[{"name": "Retrieve_memory", "arguments": {"query": NaN, "top_k": Infinity}}]',
        '[{"name": "Retrieve_memory", "arguments": {"query": "q", "top_k": -Infinity}}]',
        '[{"name": "Retrieve_memory", "arguments": {"query": "q", "top_k": 1e999}}]',
        '[{"name": "Retrieve_memory", "arguments": {"query": "q", "top_k": ' + "9" * 5000 + "}}]",
        '[{"name": "Add_memory", "name": "Delete_memory", "arguments": {"memory_id": "m",'
        ' "memory_id": "n", "confirmation": true}}]',
        '[{"name": "Add_memory", "arguments": {"content": "\\ud800\\udfff\\ud800 x \\u0000"}}]',
        '[{"name": "Add_memory", "arguments": {"content": "lone \ud800 surrogate"}}]',
        '[{"name": "Add_memory", "arguments": {"content": "a</tool_call>b"}}]',
        '[{"name": "Add_memory", "arguments": {"content": "a<\\/tool_call>b"}}]',
        '[{"name": "Add_memory", "arguments": {"content": "c", "metadata": {"path": "../../x",'
        ' "__class__": {"__init__": 1}}}}]',
        '[{"name": "\\u0041dd_memory", "arguments": {"content": "escaped name"}}]',
        '[{"name": "Retrieve_memory", "arguments": {"query": "q", "metadata_filter": '
        + json.dumps({f"k{i}": PATHS[i % len(PATHS)] for i in range(rng.choice([3, 400]))})
        + "}}]",
        "[" + ",".join(['{"name": "Filter_context", "arguments": {"criteria": "x"}}'] * 9) + "]",
        '{"name": "Add_memory", "arguments": {"content": "bare object"}}',
        '[{"name": "Add_memory", "arguments": {"content": "' + "\\u00e9" * 3000 + '"}}]',
        "\x00\x01\x02" + "\ufffe" * 10,
    ]
    body = rng.choice(payloads)
    return rng.choice([f"<think>t</think><tool_call>{body}</tool_call>",
                       f"<think>{body}</think><answer>a</answer>",
                       f"<tool_call>{body}</tool_call>"])  # fmt: skip


def _mutate(rng: random.Random, text: str) -> str:
    s = list(text)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        i = rng.randrange(len(s) + 1)
        if op < 0.3 and s:
            del s[min(i, len(s) - 1)]
        elif op < 0.6:
            s.insert(i, rng.choice('{}[]",:\\<>/ \n\ud800\x00' + "abc"))
        elif op < 0.8 and s:
            j = rng.randrange(len(s))
            s[i:i] = s[j : j + rng.randint(1, 200)] * rng.randint(1, 50)
        else:
            s = s[: rng.randrange(len(s) + 1)]
    return "".join(s)


def _random_text(rng: random.Random) -> str:
    alphabet = '<>/{}[]":,\\ thinkool_calanswer0123456789\n\ud800\u00e9\x00'
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))


def turns(n: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            yield _valid(rng)
        elif r < 0.7:
            yield _mutate(rng, _valid(rng))
        elif r < 0.85:
            yield _hostile(rng)
        else:
            yield _random_text(rng)


@pytest.fixture(scope="module")
def chat():
    return ChatFormat(make_tiny_tokenizer(128))


def _env(chat) -> MemoryEnv:
    env = MemoryEnv(
        chat, encoder=HashEncoder(64), summarizer=lambda msgs: "summary",
        clock=iter(range(10**9)).__next__, t_max=512,
    )  # fmt: skip
    env.stage = "stage1"
    env.reset_context()
    return env


def _fuzz(chat, n: int, seed: int) -> dict:
    env, exceptions, slowest = _env(chat), [], (0.0, "")
    for warm in turns(50, seed + 1):  # import and cache whatever a first call needs
        env.execute(parse_turn(warm))
    _audit["seen"].clear()
    _audit["on"].append(1)
    try:
        for i, text in enumerate(turns(n, seed)):
            if i % 200 == 0:
                env = _env(chat)  # a new episode: keep the context and the store episode-sized
            t0 = time.perf_counter()
            try:
                turn = parse_turn(text)
                env.execute(turn)
            except Exception as e:  # the finding
                exceptions.append((type(e).__name__, str(e)[:200], text[:200]))
            dt = time.perf_counter() - t0
            if dt > slowest[0]:
                slowest = (dt, text[:80])
    finally:
        _audit["on"].clear()
    return {"inputs": n, "exceptions": exceptions, "slowest_s": round(slowest[0], 4),
            "slowest_input": slowest[1], "audit": list(_audit["seen"])}  # fmt: skip


def _check(r: dict) -> None:
    print(json.dumps({k: (len(v) if k == "exceptions" else v) for k, v in r.items()}))
    assert r["exceptions"] == [], r["exceptions"][:5]
    assert r["slowest_s"] < TURN_SECONDS, r["slowest_input"]
    assert r["audit"] == [], r["audit"][:5]


def test_fuzz_ten_thousand_turns(chat):
    _check(_fuzz(chat, 10_000, seed=0))


@pytest.mark.slow
def test_fuzz_hundred_thousand_turns(chat):
    _check(_fuzz(chat, 100_000, seed=1))


def test_ten_megabyte_add_memory_is_refused_without_a_copy(chat):
    """Past the protocol (a caller handing the dispatcher a parsed call directly) an Add_memory of
    10 MB is refused by `memory.max_content_chars`, stores nothing, and allocates little."""
    env = _env(chat)
    content = "x" * 10_000_000
    huge = Turn(think="t", tool_calls=[{"name": "Add_memory", "arguments": {"content": content}}])
    assert parse_turn(format_turn("t", huge.tool_calls)).violation == "turn_too_long"
    tracemalloc.start()
    try:
        _, (rec,) = env.execute(huge)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (rec.ok, rec.code) == (False, "limit") and len(env.ltm) == 0
    assert "limit is 4096" in rec.result["error"]
    assert peak < 1_000_000, peak  # no copy of the 10 MB argument was made
    meta = {"k": "v" * 5000}
    bad_meta = Turn("t", [{"name": "Add_memory", "arguments": {"content": "c", "metadata": meta}}])
    _, (rec,) = env.execute(bad_meta)
    assert (rec.ok, rec.code) == (False, "limit") and len(env.ltm) == 0


def test_store_capacity_is_enforced(chat):
    env = MemoryEnv(chat, encoder=HashEncoder(64), summarizer=lambda m: "s", max_entries=3)
    env.stage = "stage1"
    env.reset_context()
    add = {"name": "Add_memory", "arguments": {"content": "c"}}
    codes = [env.execute(Turn("t", [add]))[1][0].code for _ in range(5)]
    assert codes == [None, None, None, "limit", "limit"] and len(env.ltm) == 3


def test_path_like_metadata_is_only_data(chat, tmp_path, monkeypatch):
    """Path-like and shell-like metadata is stored and matched as text, never followed."""
    monkeypatch.chdir(tmp_path)
    env = _env(chat)
    _audit["seen"].clear()
    _audit["on"].append(1)
    try:
        for p in PATHS:
            add = {"name": "Add_memory", "arguments": {"content": f"about {p}",
                                                       "metadata": {"path": p}}}  # fmt: skip
            (_, (rec,)) = env.execute(Turn("t", [add]))
            assert rec.ok, rec.result
        flt = {"query": "about", "top_k": 10, "metadata_filter": {"path": "../../etc/passwd"}}
        _, (rec,) = env.execute(Turn("t", [{"name": "Retrieve_memory", "arguments": flt}]))
    finally:
        _audit["on"].clear()
    assert [h["metadata"]["path"] for h in rec.result["results"]] == ["../../etc/passwd"]
    assert _audit["seen"] == [] and list(tmp_path.iterdir()) == []


# Calls that would hand text to an interpreter, a shell, or a deserializer, by module.
_BANNED_CALLS = {"eval", "exec", "compile", "__import__", "breakpoint"}
_BANNED_MODULES = {"pickle", "marshal", "shelve", "subprocess", "dill", "cloudpickle"}
_BANNED_ATTRS = {("os", "system"), ("os", "popen"), ("os", "execv"), ("os", "execvp"),
                 ("os", "spawnv"), ("os", "posix_spawn")}  # fmt: skip
# The one dynamic import: a class named by the config's env registry, never by model output.
_ALLOWED_DYNAMIC = {"envs/__init__.py"}
# The sweep launcher runs experiment commands it builds from a sweep definition (argument
# lists, no shell); model output never reaches it.
_ALLOWED_SUBPROCESS = {"sweeps.py"}


def test_audit_no_code_path_from_output_to_interpreter_shell_or_pickle():
    """A scan of the package source: no eval/exec/compile, no pickle-family or subprocess
    import, no os.system/popen/exec/spawn, numpy loads never allow pickles, `shell=True`
    nowhere, and dynamic imports only where a constant registry names the module."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(), filename=rel)
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    node.module or ""]  # fmt: skip
                for name in names:
                    if name == "subprocess" and rel in _ALLOWED_SUBPROCESS:
                        continue
                    if name.split(".")[0] in _BANNED_MODULES:
                        problems.append(f"{where} imports {name}")
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Name) and f.id in _BANNED_CALLS:
                problems.append(f"{where} calls {f.id}")
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                if (f.value.id, f.attr) in _BANNED_ATTRS:
                    problems.append(f"{where} calls {f.value.id}.{f.attr}")
                if f.attr == "import_module" and rel not in _ALLOWED_DYNAMIC:
                    problems.append(f"{where} imports a module by name")
                if (f.value.id, f.attr) in (("np", "load"), ("numpy", "load")):
                    pickles = [k for k in node.keywords if k.arg == "allow_pickle"]
                    if not pickles or not (
                        isinstance(pickles[0].value, ast.Constant)
                        and pickles[0].value.value is False
                    ):
                        problems.append(f"{where} np.load without allow_pickle=False")
            for k in node.keywords:
                if k.arg == "shell" and not (
                    isinstance(k.value, ast.Constant) and not k.value.value
                ):
                    problems.append(f"{where} shell=True")
    assert problems == []
