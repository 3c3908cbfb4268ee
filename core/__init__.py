"""Core logic of the product search & recommendation service (no web framework, no modal)."""

__version__ = "0.1.0"
