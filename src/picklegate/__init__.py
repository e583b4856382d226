"""picklegate: a fail-closed static allowlist gate for pickle globals in model files."""
from __future__ import annotations

__version__ = "0.1.0"
