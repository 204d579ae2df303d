"""The NAS-Bench-201 search space and its benchmark table."""
