"""raypipe: distributed batch video generation on Ray."""

__version__ = "0.1.0"
