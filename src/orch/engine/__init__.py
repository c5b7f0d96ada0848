"""The run engine: the partition lifecycle (no I/O), pure run policies, and the runtime driving them."""
