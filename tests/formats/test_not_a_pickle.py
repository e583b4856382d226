"""Not a pickle is not malformed: bytes whose pickle reading stops before any import cannot run
code through any loader, so they are 'unknown-format', which `unknown_formats: allow` covers.
A stream that reaches an import and then breaks stays malformed."""
from __future__ import annotations

import pytest

from picklegate.findings import FindingKind, Status
from picklegate.policy import load_policy
from picklegate.scan import scan_bytes

from .build import evil_global

POLICY = "version: 1\nextends: [builtins-safe]\n"
ALLOW_UNKNOWN = POLICY + "unknown_formats: allow\n"


def _scan(data: bytes, text: str, path: str = "notes.p"):
    policy = load_policy("p.yaml", read=lambda _: text)
    return scan_bytes(data, policy, path=path)


TEXTS = {
    "prose starting with an opcode byte": b"hello, this is a README that ends up named .p\n",
    "csv named .dat": b"a,b,c\n1,2,3\n",
    "json": b'(\n  "not": "quite json"\n)\n',
    "protocol header then junk": b"\x80\x02" + b"\xff" * 10,
}


@pytest.mark.parametrize("name", TEXTS)
def test_text_is_unknown_format_and_allowable(name):
    data = TEXTS[name]
    strict = _scan(data, POLICY)
    assert strict.status is Status.VIOLATION
    assert [f.kind for f in strict.findings] == [FindingKind.UNKNOWN_FORMAT]
    assert strict.findings[0].message.startswith("not a pickle: a pickle loader stops at offset")
    assert _scan(data, ALLOW_UNKNOWN).status is Status.CLEAN


def test_a_stream_that_reaches_an_import_stays_malformed():
    data = evil_global("builtins", "len")[:-3]          # GLOBAL builtins.len, then cut off
    for text in (POLICY, ALLOW_UNKNOWN):
        result = _scan(data, text)
        assert result.status is Status.VIOLATION
        assert FindingKind.MALFORMED in {f.kind for f in result.findings}
