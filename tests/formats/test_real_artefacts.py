"""Every real artefact in tests/fixtures/real (and, when PICKLEGATE_LIVE_FIXTURES names a
directory, every artefact freshly written there by tests/fixtures/generate.py): detected by
content, clean under exactly the presets its MANIFEST entry needs, failing without any one of
them, and with the notes its format promises."""
from __future__ import annotations

import os
import re
import tarfile
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from picklegate.findings import FindingKind, Status
from picklegate.policy import Verdict

from .build import FIXTURES, fixture, manifest, torch_tar
from .conftest import policy, scan

LIVE = os.environ.get("PICKLEGATE_LIVE_FIXTURES")
FOLDERS = [("committed", FIXTURES)] + ([("live", Path(LIVE))] if LIVE else [])


def _entries() -> list:
    params = []
    for label, folder in FOLDERS:
        if not (folder / "MANIFEST.json").is_file():
            params.append(pytest.param(folder, None, id=f"{label}-missing-manifest"))
            continue
        params += [pytest.param(folder, e, id=f"{label}-{e['file']}") for e in manifest(folder)]
    return params


ENTRIES = _entries()


def _load(folder: Path, entry: dict | None) -> bytes:
    if entry is None:
        pytest.fail(f"{folder} has no MANIFEST.json (PICKLEGATE_LIVE_FIXTURES is set, so the "
                    "live fixtures must have been generated)")
    return fixture(entry["file"], folder)


def _names(data: bytes) -> list[str]:
    with zipfile.ZipFile(BytesIO(data)) as z:
        return z.namelist()


def _prefix(names: list[str]) -> str:
    return next(n for n in names if n.endswith("/data.pkl"))[:-len("/data.pkl")]


def _expected_member(entry: dict, data: bytes, member: str | None) -> bool:
    """Is ``member`` where a global of this artefact can legitimately be reported?"""
    fmt = entry["expected_format"]
    if "+" in fmt:
        return member == fmt.split("+", 1)[1]          # the codec: Context.child(codec, "!")
    if fmt in ("pickle", "joblib", "numpy-npy", "torch-legacy"):
        return member is None
    if fmt == "npz":
        return member in _names(data) and member.endswith(".npy")
    if fmt == "tar":                                  # a model folder: model.pt inside
        with tarfile.open(fileobj=BytesIO(data)) as archive:
            checkpoint = archive.extractfile("model.pt")
            assert checkpoint is not None
            inner = _names(checkpoint.read())
        return member == f"model.pt/{_prefix(inner)}/data.pkl"
    prefix = _prefix(_names(data))
    if fmt == "torch-zip":
        return member == f"{prefix}/data.pkl"
    assert fmt == "torchscript", fmt
    return member in _names(data) and member.startswith(prefix + "/") and \
        member.endswith((".pkl", ".debug_pkl"))


def test_manifest_is_not_empty():
    for label, folder in FOLDERS:
        if (folder / "MANIFEST.json").is_file():
            files = manifest(folder)
            assert files, f"{label} manifest lists no files"
            formats = {e["expected_format"] for e in files}
            # the committed set covers every family the tests below rely on
            if label == "committed":
                assert {"pickle", "torch-zip", "torch-legacy", "torchscript", "joblib",
                        "numpy-npy", "npz"} <= formats


@pytest.mark.parametrize("folder, entry", ENTRIES)
def test_format_detected_and_clean_with_exactly_its_presets(folder, entry):
    data = _load(folder, entry)
    result = scan(data, path=entry["file"], presets=entry["needs"],
                  also_allow=entry["also_allow"])
    assert result.format == entry["expected_format"]
    assert result.status is Status.CLEAN, [f.message for f in result.findings]
    assert result.findings == ()
    if entry["needs"]:
        assert result.inventory.imports, "needs presets, yet no import was found"
    else:
        assert result.inventory.imports == ()


@pytest.mark.parametrize("folder, entry", [p for p in ENTRIES
                                           if p.values[1] is None or p.values[1]["needs"]])
def test_each_needed_preset_is_necessary(folder, entry):
    """Dropping any one needed preset fails the file, only with not-allowed findings for
    globals that preset allows, reported in the member that holds them. (Artefacts that need
    no preset are covered by the test above: they import nothing.)"""
    data = _load(folder, entry)
    for missing in entry["needs"]:
        rest = [p for p in entry["needs"] if p != missing]
        result = scan(data, path=entry["file"], presets=rest, also_allow=entry["also_allow"])
        assert result.status is Status.VIOLATION, f"clean without preset {missing!r}"
        assert {f.kind for f in result.findings} == {FindingKind.NOT_ALLOWED}
        only = policy([missing])
        for f in result.findings:
            assert only.decide(f.module, f.name).verdict is Verdict.ALLOWED, \
                f"{f.module}.{f.name} fails without {missing!r} but that preset does not allow it"
            assert _expected_member(entry, data, f.member), (f.member, f.module, f.name)
            assert f.offset is not None and f.offset >= 0


@pytest.mark.parametrize("folder, entry", [p for p in ENTRIES if p.values[1] is None or
                                           p.values[1]["library"] == "torch"])
def test_torch_artefacts_fail_under_builtins_safe_alone(folder, entry):
    data = _load(folder, entry)
    result = scan(data, path=entry["file"], presets=["builtins-safe"])
    assert result.status is Status.VIOLATION
    rebuild = {f for f in result.findings if f.module == "torch._utils"
               and f.name.startswith("_rebuild_tensor")}
    assert rebuild, "no tensor rebuild function reported"
    assert all(f.kind is FindingKind.NOT_ALLOWED for f in rebuild)
    if entry["expected_format"] in ("torch-zip", "torchscript"):
        assert {f.member for f in rebuild} == {f"{_prefix(_names(data))}/data.pkl"}
    else:
        assert {f.member for f in rebuild} == {None}


@pytest.mark.parametrize("folder, entry", [p for p in ENTRIES if p.values[1] is None or
                                           p.values[1]["expected_format"]
                                           in ("torch-zip", "torchscript")])
def test_torch_zip_notes_count_skipped_storage_records(folder, entry):
    data = _load(folder, entry)
    names = _names(data)
    # a storage record is <folder>/<key> next to a pickle <folder>.pkl
    storages = [n for n in names if "/" in n and n.rsplit("/", 1)[0] + ".pkl" in names]
    assert storages, "a torch archive with tensors has storage records"
    result = scan(data, path=entry["file"], presets=entry["needs"],
                  also_allow=entry["also_allow"])
    notes = [n for n in result.inventory.notes if "tensor storage record" in n]
    assert len(notes) == 1
    assert re.match(rf"^{len(storages)} tensor storage record\(s\) named by persistent ids",
                    notes[0]), notes[0]


@pytest.mark.parametrize("folder, entry", [p for p in ENTRIES if p.values[1] is None or
                                           p.values[1]["expected_format"] == "torchscript"])
def test_torchscript_notes_list_code_members(folder, entry):
    data = _load(folder, entry)
    code = sorted(n for n in _names(data) if "/code/" in n)
    assert code
    result = scan(data, path=entry["file"], presets=entry["needs"],
                  also_allow=entry["also_allow"])
    notes = [n for n in result.inventory.notes if "TorchScript code members" in n]
    assert len(notes) == 1
    assert notes[0].endswith(": " + ", ".join(code))


@pytest.mark.parametrize("folder, entry", [p for p in ENTRIES if p.values[1] is None or
                                           p.values[1]["expected_format"] == "torchscript"])
def test_torchscript_classes_need_also_allow(folder, entry):
    data = _load(folder, entry)
    assert entry["also_allow"]
    result = scan(data, path=entry["file"], presets=entry["needs"])
    assert result.status is Status.VIOLATION
    assert {f"{f.module}.{f.name}" for f in result.findings} == set(entry["also_allow"])
    assert {f.kind for f in result.findings} == {FindingKind.NOT_ALLOWED}


MISLEADING = ["model.pt", "model.pkl", "weights.bin", "arrays.npy", "archive.zip",
              "model.safetensors", "README"]


@pytest.mark.parametrize("folder, entry", ENTRIES)
def test_detection_ignores_the_file_name(folder, entry):
    data = _load(folder, entry)
    for path in MISLEADING:
        result = scan(data, path=path, presets=entry["needs"], also_allow=entry["also_allow"])
        assert (result.format, result.status) == (entry["expected_format"], Status.CLEAN), path


@pytest.mark.parametrize("fixture_name, path, expected", [
    ("plain_proto2.pkl", "model.pt", "pickle"),                 # a .pt that is a bare pickle
    ("plain_proto4.pkl", "pytorch_model.bin", "pickle"),
    ("torch_module_sd.pt", "model.pkl", "torch-zip"),           # a zip named .pkl
    ("numpy_arrays.npz", "model.pkl", "npz"),
    ("numpy_float.npy", "weights.bin", "numpy-npy"),            # an npy named .bin
    ("sklearn_logreg.joblib", "model.pt", "joblib"),
    ("sklearn_logreg.joblib.gz", "model.npy", "joblib+gzip"),
    ("torch_module_sd_legacy.pt", "model.npz", "torch-legacy"),
])
def test_detected_by_content_with_misleading_paths(fixture_name, path, expected):
    result = scan(fixture(fixture_name), path=path)
    assert result.format == expected
    assert result.status is Status.CLEAN


def test_tar_named_pt_is_a_torch_tar():
    result = scan(torch_tar(), path="model.pt", presets=["torch"])
    assert result.format == "torch-tar"
    assert result.status is Status.CLEAN, [f.message for f in result.findings]
