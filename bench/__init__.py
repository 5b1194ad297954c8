"""Benchmarks, run by hand; numbers go to docs/benchmarks.md with the command that made them."""
