"""Name normalisation exactly as CPython's ``Unpickler.find_class`` does it.

pickle.py (3.11) find_class: ``if self.proto < 3 and self.fix_imports:`` map the pair through
``_compat_pickle.NAME_MAPPING``, else the module through ``IMPORT_MAPPING``. We use CPython's own
tables so the mapping can never drift from the interpreter that will load the file.
"""
from __future__ import annotations

import _compat_pickle


def map_python2_name(module: str, name: str, proto: int) -> tuple[str, str]:
    """Return (module, name) as find_class would import it at protocol ``proto``."""
    if proto >= 3:
        return module, name
    mapped = _compat_pickle.NAME_MAPPING.get((module, name))
    if mapped is not None:
        return mapped
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def looks_importable(module: str, name: str) -> bool:
    """Could ``find_class(module, name)`` import something in an ordinary environment?

    Bytes that are not a pickle, read as opcodes, still make GLOBAL read two "lines": names
    with NUL bytes, spaces or punctuation that no module on sys.path carries. Only readings that
    are not the file's primary format use this to tell such noise from a real import; the
    primary reading reports every name, importable-looking or not.
    """
    return all(part.isidentifier() for text in (module, name) for part in text.split("."))
