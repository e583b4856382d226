"""Format detection by content and the container readers that feed the opcode machine.

Each reader takes a buffer and a :class:`Context` and adds imports, findings and notes to an
:class:`Analysis`. Readers call :func:`analyse_member` for what they contain; it goes through
the dispatcher the context carries (formats/interpretations.py: the ordered table of every way a
loader reads bytes), so nesting works the same at every depth and every bound in
:class:`Limits` is enforced in one place.
"""
from __future__ import annotations

from picklegate.formats.base import Analysis, Context, analyse_member

__all__ = ["Analysis", "Context", "analyse_member"]
