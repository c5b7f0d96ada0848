"""The run engine: planning, the async runtime that drives partitions, costs, preflight."""
