"""Benchmarks behind `edgeagent bench`: one module per area on the common harness in `harness`."""
