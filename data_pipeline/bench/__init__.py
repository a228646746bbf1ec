"""Benchmarks of the curation pipeline (registered under the `stiv_jax.benchmarks` entry points)."""
