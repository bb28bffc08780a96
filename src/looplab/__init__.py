"""looplab: a notebook-first, reproducible environment for the whole machine-learning loop."""

__version__ = "0.1.0"
