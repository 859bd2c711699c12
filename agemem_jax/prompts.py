"""Every prompt string the project sends to a model, in one place for prompt ablations.

The wording is ours throughout; where it restates the method (the protocol, the summarizer's
instruction, the judge's 0-1 rubric) the rules and numbers are the spec's.
"""

# ---------------------------------------------------------------------------------------------
# The protocol at the head of every system prompt (the tool listing follows it).

TOOL_LISTING = "Available tools:\n<tools>\n{listing}\n</tools>"  # {listing}: tools.render_tools

PROTOCOL_RULES = """\
You are an assistant with two memories that you manage yourself:
- long-term memory, a store of entries that persists across the whole task;
- short-term memory, this conversation, which has a limited token budget.

Every turn starts with private reasoning in <think>...</think>. After it comes exactly one of:
- <tool_call>[{"name": "<tool>", "arguments": {...}}, ...]</tool_call>, a JSON list of one or more \
calls; their results come back as tool messages, and then you continue with a new turn;
- <answer>...</answer>, your reply to the user.
Write nothing outside these tags."""


# Without tools (the no-memory and RAG baselines) the protocol keeps only think -> answer, so
# the prompt never offers a call the environment would reject.
PROTOCOL_RULES_NO_TOOLS = """\
Every turn starts with private reasoning in <think>...</think>, followed by your reply to the \
user in <answer>...</answer>. Write nothing outside these tags."""


# ---------------------------------------------------------------------------------------------
# The hint appended to every protocol-violation observation.

FORMAT_HINT = (
    "Reply as <think>…</think> followed by exactly one <tool_call>[…]</tool_call> or "
    "<answer>…</answer>, with no text outside the tags."
)


# ---------------------------------------------------------------------------------------------
# Three-stage HotpotQA episodes: the task instructions after the tool listing.

HOTPOTQA_INSTRUCTIONS = """\
You are a helpful assistant with a long-term memory store and a short-term context. The \
conversation comes in three parts. First, a user chats with you and shares information: store \
what may matter later with Add_memory (the question is not known yet). Then the context is \
cleared and unrelated material arrives: keep the context clean with Filter_context and \
Summary_context. Finally a question comes: use Retrieve_memory to recall what you stored and \
give a short final answer inside <answer></answer>. While the conversation goes on, reply \
<answer>Noted.</answer> once you have handled a message."""


# ---------------------------------------------------------------------------------------------
# Interactive benchmarks (ALFWorld, ScienceWorld, BabyAI, PDDL).

ENV_INSTRUCTIONS = """\
You are an agent acting in a text environment. Each user message is what you observe. Reply \
with exactly one environment action inside <answer></answer> (for example \
<answer>go to desk 1</answer>); "check valid actions" lists what you can do. Before acting you \
may use the memory tools: store what you learn (Add_memory), recall it (Retrieve_memory), and \
keep the context short (Summary_context, Filter_context)."""


# ---------------------------------------------------------------------------------------------
# Method variants (agemem_jax.methods): none offers a tool the method lacks.

HOTPOTQA_STAGES = """\
The conversation comes in three parts. First, a user chats with you and shares information \
(the question is not known yet). Then unrelated material arrives. Finally a question comes: \
give a short final answer inside <answer></answer>. Until the question, reply \
<answer>Noted.</answer> to each message."""


ENV_BASE = """\
You are an agent acting in a text environment. Each user message is what you observe. Reply \
with exactly one environment action inside <answer></answer> (for example \
<answer>go to desk 1</answer>); "check valid actions" lists what you can do."""


LT_HOTPOTQA_INSTRUCTIONS = f"""\
You are a helpful assistant with a long-term memory store. {HOTPOTQA_STAGES} While the user \
shares information, store what may matter later with Add_memory. Before each message, the \
stored entries closest to it are shown to you with their ids; keep the store correct with \
Update_memory and Delete_memory."""


LT_ENV_INSTRUCTIONS = f"""\
{ENV_BASE} Before acting you may store what you learn with Add_memory and correct entries \
with Update_memory and Delete_memory; the stored entries closest to each observation are shown \
to you automatically."""


NO_MEMORY_HOTPOTQA_INSTRUCTIONS = f"You are a helpful assistant. {HOTPOTQA_STAGES}"

RAG_HOTPOTQA_INSTRUCTIONS = (
    f"You are a helpful assistant. {HOTPOTQA_STAGES} Every message is kept in a memory store, "
    "and before each message the stored messages closest to it are shown to you."
)

RAG_ENV_INSTRUCTIONS = (
    f"{ENV_BASE} Every observation is kept in a memory store, and the stored observations "
    "closest to the current one are shown to you."
)


# ---------------------------------------------------------------------------------------------
# Summary_context: the summarizer's system prompt (spec section 2).

SUMMARY_REQUEST = "Summarize these messages:\n\n{transcript}"  # the user turn; {transcript}

SUMMARY_PREFIX = "Summary of earlier context:\n"  # opens the message that replaces the span

SUMMARY_SYSTEM_PROMPT = """\
You condense part of an agent's conversation. The summary you write replaces the original \
messages, which will be gone, so keep every important fact, name, number, date, intention, \
decision and open question they contain. Be concise and factual. Write the summary only: no \
greeting, no preamble, no filler."""


# ---------------------------------------------------------------------------------------------
# LLM judges: our wording of the rubrics of spec sections 6 and 8.

JUDGE_SYSTEM_PROMPT = (
    "You grade the work of an AI assistant. Read the rubric and the material, then reply with a "
    "single number between 0 and 1. Write nothing else: no words, no explanation."
)


JUDGE_SCALE = """How to score:
1.0 = fully right, or the same meaning in other words
0.8-0.9 = right in substance, with small slips
0.6-0.7 = partly right
0.4-0.5 = serious mistakes
0.2-0.3 = mostly wrong
0.0-0.1 = wrong or unrelated"""


JUDGE_RUBRICS = {
    "task": (
        "Does the assistant's answer give the same answer as the reference answer to the "
        "question? Judge meaning, not wording."
    ),
    "memory": (
        "An assistant kept the memory entries below while reading about a topic. Compare them "
        "with the facts it was expected to keep. A high score means the entries cover the "
        "expected facts and hold little else; lower the score for every expected fact that is "
        "missing and for entries that have nothing to do with the facts."
    ),
    "storage": (
        "An assistant saved the memory entry below before it knew the question. Is it a good "
        "entry for answering the question? A good entry states a fact that helps reach the "
        "reference answer, clearly and on its own. Score 1 for a good entry and 0 for an "
        "irrelevant, vague or garbled one."
    ),
    "relevance": (
        "An assistant searched its memory while answering the question and got the entries "
        "below. How relevant are they to the question? Score 1 when they hold what is needed "
        "to answer it and nothing unrelated, and 0 when none of them helps."
    ),
}


# ---------------------------------------------------------------------------------------------
# The OpenAI-compatible server (agemem_jax.serving): how a request's `tools` reach the model.
# {listing}: one JSON function spec per line; {open}/{close}: the tool-call tags.

SERVE_TOOLS = """\
You can call functions. Their specifications:
<tools>
{listing}
</tools>
To call a function, reply with {open}{{"name": <function name>, "arguments": <JSON object>}}{close} \
and nothing else."""
