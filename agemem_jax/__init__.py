"""agemem_jax: LLM agents that manage their own memory, trained with step-wise GRPO."""

__version__ = "0.1.0"
