"""BUILD abuse: state applied to a global itself, and state that sets special attributes.

Streams are assembled with opbuilder; the only unpickling is the oracle below, whose find_class
returns a fresh stub class, to show what load_build really does with such a stream.
"""
from __future__ import annotations

import io
import pickle

import pytest
from opbuilder import P

from picklegate.findings import FindingKind
from picklegate.machine import KEPT_ITEMS, analyse_pickles

ABUSE = FindingKind.BUILD_ABUSE


def _cls(p: P) -> P:
    return p.global_("torch.nn", "Module")


def _instance(p: P) -> P:
    return p.global_("mymodels", "Net").empty_tuple().newobj()


def _dict(p: P, keys: list[object]) -> P:
    p.empty_dict().mark()
    for key in keys:
        if isinstance(key, str):
            p.binunicode(key)
        else:
            p.binint(key)
        p.none()
    return p.setitems()


def _slot_state(p: P, keys: list[str]) -> P:
    return _dict(p.none(), keys).tuple2()


CASES = {
    # id: (stream, expected build-abuse findings as (module.name or None, message fragment))
    "build on a class, slot state":
        (_slot_state(_cls(P().proto(2)), ["forward"]).build().stop(),
         [("torch.nn.Module", "itself")]),
    "build on a class fetched from the memo":
        (_slot_state(_cls(P().proto(2)).binput(0).pop().binget(0), ["x"]).build().stop(),
         [("torch.nn.Module", "itself")]),
    "dict state sets __array_interface__":
        (_dict(_instance(P().proto(2)), ["weight", "__array_interface__"]).build().stop(),
         [(None, "'__array_interface__'")]),
    "slot state sets __class__":
        (_slot_state(_instance(P().proto(2)), ["__class__"]).build().stop(),
         [(None, "'__class__'")]),
    "special key beyond the kept items":
        (_dict(_instance(P().proto(2)),
               [f"k{i}" for i in range(KEPT_ITEMS + 5)] + ["__dict__"]).build().stop(),
         [(None, "'__dict__'")]),
    "key computed by a call":
        (_instance(P().proto(2)).empty_dict()
         .global_("builtins", "str").binunicode("x").tuple1().reduce().none().setitem()
         .build().stop(),
         [(None, "cannot be known statically")]),
    "ordinary state":
        (_dict(_instance(P().proto(2)), ["weight", "_private", "__", "__x"]).build().stop(), []),
    "integer keys and a non-dict state":
        (_dict(_instance(P().proto(2)), [1, 2]).build().binint(3).build().stop(), []),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_build_abuse(case):
    stream, expected = CASES[case]
    out = analyse_pickles(stream.bytes())
    got = [f for f in out.findings if f.kind is ABUSE]
    assert len(got) == len(expected), [f.message for f in out.findings]
    for finding, (dotted, fragment) in zip(got, expected, strict=True):
        assert (f"{finding.module}.{finding.name}" if finding.module else None) == dotted
        assert fragment in finding.message
    assert {f.kind for f in out.findings} <= {ABUSE}


class Plain:
    def __init__(self) -> None:
        self.weight, self._cache, self.__private = [1.0], {}, 2


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self) -> None:
        self.a, self.b = 1, 2


def test_real_objects_with_state_are_not_abuse():
    for obj in (Plain(), Slotted(), [Plain()] * 3):
        for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):   # slots need 2+
            out = analyse_pickles(pickle.dumps(obj, protocol))
            assert not [f for f in out.findings if f.kind is ABUSE], protocol


def test_oracle_build_on_a_global_changes_it_for_everyone():
    """What load_build does with slot state on an imported class: setattr on the class."""
    stub = type("Stub", (), {})

    class Recorder(pickle._Unpickler):  # type: ignore[name-defined]
        def find_class(self, module: str, name: str) -> object:
            return stub

    stream = _slot_state(_cls(P().proto(2)), ["forward"]).build().stop().bytes()
    assert Recorder(io.BytesIO(stream)).load() is stub
    assert "forward" in vars(stub)


def test_a_state_reused_by_many_builds_is_checked_once():
    """Each BUILD of a memoised state dict costs O(new keys), not O(all keys): the machine
    records how far it has checked. Counted through special_name, never timed."""
    from unittest import mock

    import picklegate.machine as machine

    keys = [f"k{i}" for i in range(500)]
    stream = _dict(_instance(P().proto(2)), keys).binput(1).pop().binput(0)
    for _ in range(200):
        stream.binget(0).binget(1).build().pop()
    data = stream.stop().bytes()
    with mock.patch.object(machine, "special_name", wraps=machine.special_name) as spy:
        out = analyse_pickles(data)
    assert not [f for f in out.findings if f.kind is ABUSE]
    assert spy.call_count == 500                # each key once, whatever the BUILD count
