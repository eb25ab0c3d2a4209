"""mlonas: a reproducible, auditable workflow for multi-level neural architecture search."""

__version__ = "0.1.0"
