"""Executors run the per-scheme stages of a sweep: plan, local worker processes or Ray tasks, the runner."""
