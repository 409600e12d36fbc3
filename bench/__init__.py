"""Benchmarks (`make bench`). Each prints its figure as a ratio measured in one run."""
