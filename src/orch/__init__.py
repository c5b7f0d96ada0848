"""orch: a filesystem-data-bus orchestrator for prompt-defined LLM agents."""

__version__ = "0.1.0"
