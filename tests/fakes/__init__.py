"""Fakes that stand in for the model (never for orch's own code)."""
