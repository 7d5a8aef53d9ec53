"""Benchmarks: the load harness (benchmarks.harness) and micro-benchmarks; not an installed package."""
