"""The run engine: planning, the partition lifecycle (no I/O), pure run policies, and the async runtime."""
