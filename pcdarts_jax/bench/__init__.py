"""Benchmarks: step timing, memory, FLOPs and program measurements."""
