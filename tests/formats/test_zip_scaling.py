"""Zip reading costs what the archive's metadata costs. Work is counted (bytes a reader is
handed or searches through a CountingBuffer), never timed: discovering and analysing the
members of a stored torch-like zip must examine the same bytes whatever its tensors hold and
grow linearly (not quadratically, not with the data) in the number of tensors."""
from __future__ import annotations

import pytest

from picklegate.formats.archive import read_zip
from picklegate.formats.base import Analysis
from picklegate.formats.interpretations import new_context

from .build import CountingBuffer, torch_like_zip


def _work(tensors: int, size: int) -> tuple[int, int, Analysis]:
    buf = CountingBuffer(torch_like_zip(tensors, size))
    analysis = Analysis()
    read_zip(buf, 0, len(buf), new_context(), analysis)     # type: ignore[arg-type]
    return buf.examined, buf.finds, analysis


def _metadata(tensors: int, size: int) -> int:
    """Everything in the archive but the tensors' bytes, plus the two 4 KiB steps the end
    record searches take (zipfile's and miniz's)."""
    return len(torch_like_zip(tensors, size)) - tensors * size + 2 * 4096


@pytest.mark.parametrize("tensors", [16, 256])
def test_work_does_not_depend_on_tensor_size(tensors):
    small, small_finds, small_analysis = _work(tensors, 1024)
    large, large_finds, large_analysis = _work(tensors, 1024 * 1024)
    # the storages are exempt (named by data.pkl) and no search runs through them
    assert small_analysis.out.findings == large_analysis.out.findings == []
    assert any(f"{tensors} tensor storage record(s)" in n for n in large_analysis.notes)
    assert large == small
    assert large_finds == small_finds
    assert large < 4 * _metadata(tensors, 1024 * 1024)


def test_work_is_linear_in_the_number_of_tensors():
    few, few_finds, _ = _work(1000, 64)
    many, many_finds, analysis = _work(20_000, 64)
    assert analysis.out.findings == []
    # metadata per tensor is fixed: 20x the tensors is 20x the work, within rounding
    assert many <= 20 * few * 1.05
    assert many < 4 * _metadata(20_000, 64)
    # the only searches are the pickle machine's line reads (two per GLOBAL in data.pkl):
    # none runs per member over the archive
    assert many_finds - 2 * 20_000 == few_finds - 2 * 1000
