"""segbench: the benchmark harness (nothing about a particular architecture)."""

__version__ = "0.1.0"
