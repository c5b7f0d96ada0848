"""Configuration: load and validate orch.yaml, blueprints, partitions and documents into frozen records."""
