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
# Memory baselines (agemem_jax.baselines): our wording of each system's published pipeline.
# Every reply is a JSON object; the examples show its shape to small models.

BASELINE_HOTPOTQA_INSTRUCTIONS = (
    f"You are a helpful assistant. {HOTPOTQA_STAGES} A memory system keeps what the user "
    "shares; when the question comes, what it recalls is shown to you just before it."
)

BASELINE_ENV_INSTRUCTIONS = (
    f"{ENV_BASE} A memory system keeps what you did and observed; before each observation, "
    "what it recalls is shown to you."
)

BASELINE_RECALL = "Recalled from memory:\n{items}"  # {items}: one "- text" line per memory
BASELINE_RECALL_EMPTY = "Recalled from memory: nothing."

# The material a system ingests from an interactive benchmark: the start, then every step.
BASELINE_ENV_FIRST = "Task: {task}\nObservation: {observation}"
BASELINE_ENV_STEP = "Action: {action}\nObservation: {observation}"

# -- Mem0: fact extraction, then one update decision over the nearest memories.

MEM0_EXTRACT_CONVERSATION = """\
You keep a record of what a user tells you. From the user's messages, list every fact worth \
remembering later: facts about people, places, organizations, works, events, dates and numbers, \
as well as the user's own details, preferences and plans. Write each fact as one short sentence \
that makes sense on its own. Skip greetings and small talk. Reply with JSON only, for example \
{"facts": ["Marie Curie was born in Warsaw.", "The user likes jazz."]}, or {"facts": []} when \
there is nothing to keep."""

MEM0_EXTRACT_ENVIRONMENT = """\
You keep a record for an agent that acts in a text environment. From the action and observation \
below, list the facts that will help the agent finish its task later: where things are, what \
containers or rooms hold, what the agent carries, what it tried and whether that worked. Write \
each fact as one short sentence that makes sense on its own. Reply with JSON only, for example \
{"facts": ["The mug is in cabinet 2.", "Drawer 1 is empty."]}, or {"facts": []} when nothing \
is worth keeping."""

MEM0_EXTRACT_USER = "{transcript}"

MEM0_UPDATE = """\
You maintain a memory store. You get the current memories, each with an id, and new facts. \
Compare each new fact with the memories and choose one event:
- ADD: the fact is new; give it the text of the new memory.
- UPDATE: the fact says more about what a memory already covers; keep that memory's id and \
write the more informative text.
- DELETE: the fact contradicts a memory; give that memory's id.
- NONE: a memory already says the same; nothing changes.
Use only the ids you were given; an ADD needs no id. Reply with JSON only, for example \
{"memory": [{"id": "0", "text": "Alice lives in Paris and works at a bakery.", \
"event": "UPDATE", "old_memory": "Alice lives in Paris."}, {"text": "Bob plays chess.", \
"event": "ADD"}, {"id": "1", "text": "...", "event": "NONE"}]}"""

MEM0_UPDATE_USER = "Current memories:\n{memories}\n\nNew facts:\n{facts}"

# -- Mem0g: entities, relations, outdated edges.

MEM0G_ENTITIES = """\
List the entities in the text: people, places, organizations, works, dates, objects and \
concepts. When the text speaks of the user in the first person (I, me, my), use the entity \
"user". Reply with JSON only, for example {"entities": [{"entity": "Marie Curie", \
"entity_type": "person"}, {"entity": "Warsaw", "entity_type": "city"}]}."""

MEM0G_RELATIONS = """\
Below are a text and the entities found in it. List the relations the text states explicitly \
between these entities, as source, relationship and destination. Use the entity names exactly as \
listed and write the relationship in lowercase words joined by underscores. Reply with JSON \
only, for example {"relations": [{"source": "Marie Curie", "relationship": "born_in", \
"destination": "Warsaw"}]}, or {"relations": []} when the text states none."""

MEM0G_RELATIONS_USER = "Text:\n{text}\n\nEntities: {entities}"

MEM0G_DELETE = """\
You keep a knowledge graph current. Below are relations already in the graph and new \
information. List the existing relations that the new information contradicts or makes \
outdated. Keep relations that can hold several values at once (a person can have many friends). \
Reply with JSON only, for example {"delete": [{"source": "Alice", "relationship": "lives_in", \
"destination": "Paris"}]}, or {"delete": []} when nothing is outdated."""

MEM0G_DELETE_USER = "Existing relations:\n{relations}\n\nNew information:\n{text}"

# -- A-Mem: note analysis, evolution over the nearest notes, query keywords.

AMEM_ANALYZE = """\
Analyze a note for a knowledge base. Give at least three keywords, the most important first; \
one sentence of context that says what the note is about and its key points; and at least \
three tags that classify it. Reply with JSON only, for example {"keywords": ["Curie", \
"physics", "Nobel Prize"], "context": "The career of Marie Curie.", "tags": ["science", \
"biography", "history"]}."""

AMEM_EVOLVE = """\
You organize a network of notes. A new note arrives together with its nearest notes, numbered \
from 0. Decide whether the network should evolve. There are two actions:
- "strengthen": link the new note to related notes (their numbers in suggested_connections) \
and give the new note's tags (tags_to_update);
- "update_neighbor": rewrite the context and tags of the nearest notes in the light of the new \
one (new_context_neighborhood and new_tags_neighborhood: one entry per nearest note, in their \
order; repeat an entry to keep it).
Reply with JSON only, for example {"should_evolve": true, "actions": ["strengthen"], \
"suggested_connections": [0], "tags_to_update": ["science"], "new_context_neighborhood": [], \
"new_tags_neighborhood": []}, or {"should_evolve": false, "actions": []}."""

AMEM_EVOLVE_USER = (
    "New note:\ncontent: {content}\ncontext: {context}\nkeywords: {keywords}\n\n"
    "Nearest notes:\n{neighbours}"
)

AMEM_NOTE = "{label}: content: {content} | context: {context} | keywords: {keywords} | tags: {tags}"

AMEM_QUERY = """\
Turn the question into search keywords for a notes database. Reply with JSON only, for \
example {"keywords": ["Marie Curie", "birthplace"]}."""

# -- LangMem: one extraction pass over the conversation and the closest memories.

LANGMEM_EXTRACT = """\
You manage the long-term memory of an assistant. Read the conversation and the existing \
memories, each with its id. Extract the facts worth keeping, with enough context that each \
stands alone; fix memories that the conversation shows to be wrong or outdated; merge \
redundant ones. Prefer surprising or lasting information, and keep every memory dense and \
distinct from the others. Reply with JSON only, for example {"actions": [{"action": "insert", \
"content": "Alice moved to Paris in 2020."}, {"action": "patch", "id": "<an existing id>", \
"content": "..."}]}, or {"actions": []} when nothing changes."""

LANGMEM_DELETE_RULE = (
    ' You may also remove a memory that is wrong with {"action": "delete", "id": "<id>"}.'
)

LANGMEM_EXTRACT_USER = "Existing memories:\n{memories}\n\nConversation:\n{transcript}"

# The OpenAI-compatible server (agemem_jax.serving): how a request's `tools` reach the model.
# {listing}: one JSON function spec per line; {open}/{close}: the tool-call tags.

SERVE_TOOLS = """\
You can call functions. Their specifications:
<tools>
{listing}
</tools>
To call a function, reply with {open}{{"name": <function name>, "arguments": <JSON object>}}{close} \
and nothing else."""
