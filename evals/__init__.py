"""Measurements of a model: data, perplexity, task accuracy, speed, memory, statistics.

Nothing here knows about run directories or MLflow; ``pipelines`` calls into it.
"""
