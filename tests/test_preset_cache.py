"""The generated preset cache (picklegate/_preset_cache.py) is the YAML, parsed ahead of time.

It exists for start-up speed only (README: Performance), so it must never change a verdict:
every preset loads to the same entries, origins included, from the cache and from its YAML;
the cache is what tools/gen_preset_cache.py writes today; an edited preset is read from YAML.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from picklegate import policy
from picklegate.policy import default_policy, load_policy, load_presets, preset_names

REPO = Path(__file__).resolve().parent.parent
NAMES = preset_names()


def _without_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "USE_PRESET_CACHE", False)


@pytest.mark.parametrize("names", [[n] for n in NAMES] + [list(policy.DEFAULT_PRESETS), NAMES])
def test_cached_presets_equal_the_yaml(monkeypatch, names):
    cached = load_presets(names, "test")
    _without_cache(monkeypatch)
    parsed = load_presets(names, "test")
    assert cached == parsed
    assert len(parsed.allow) > 0


def test_a_policy_extending_presets_is_the_same_with_the_cache(tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nextends: [builtins-safe, numpy, sklearn]\n"
                    "deny:\n  numpy: [load]\n")
    cached = load_policy(path)
    _without_cache(monkeypatch)
    assert cached == load_policy(path)
    assert cached.files == (str(path), "<preset builtins-safe>", "<preset numpy>",
                            "<preset sklearn>")


def test_the_cache_is_up_to_date():
    done = subprocess.run((sys.executable, str(REPO / "tools" / "gen_preset_cache.py"),
                           "--check"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_an_edited_preset_is_read_from_its_yaml(monkeypatch):
    """A stale stamp (the YAML changed after the cache was made) means: parse the YAML."""
    from picklegate import _preset_cache
    edited = {**_preset_cache.PRESETS["numpy"], "allow": [], "stamp": (0, 0)}
    monkeypatch.setitem(_preset_cache.PRESETS, "numpy", edited)
    from_yaml = load_presets(["numpy"], "test")
    monkeypatch.setitem(_preset_cache.PRESETS, "numpy", {**edited, "stamp":
                        policy.preset_stamp(policy._preset_text("numpy") or "")})
    assert from_yaml.allow and load_presets(["numpy"], "test").allow == ()


def test_the_default_policy_does_not_import_yaml():
    """What the cache is for: a scan under the default policy never imports PyYAML."""
    code = ("import sys; from picklegate.policy import default_policy; default_policy(); "
            "print('yaml' in sys.modules)")
    done = subprocess.run((sys.executable, "-c", code), capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO / "src")}, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_default_policy_source_is_unchanged():
    assert default_policy().source == "built-in default (builtins-safe + torch + numpy)"
