"""Train, prune and analyse continuous normalizing flows."""

__version__ = "0.1.0"
