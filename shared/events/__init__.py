"""Lifecycle events out: CloudEvents 1.0 about runs, steps and models, delivered at least once."""
