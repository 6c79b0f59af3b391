"""qeval's staged pipeline: recipes, run directories, quantizers, stages, tracking."""

__version__ = "0.1.0"
