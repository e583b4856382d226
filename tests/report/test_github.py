"""GitHub reporter: workflow-command annotations and the Markdown job summary.

Golden files: tests/report/golden/sample.github.txt and sample.summary.md; regenerate them with
PICKLEGATE_UPDATE_GOLDEN=1 (see test_sarif.py). The summary's gadget list is fixed here, so the
goldens do not depend on data/gadgets.yaml.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from picklegate.findings import FileResult, Finding, FindingKind, ScanResult, Status
from picklegate.policy import Verdict, load_policy
from picklegate.report import github, text
from picklegate.review import Gadget

from .test_sarif import INJECTY, SPACED, check_golden, sample_result

GADGETS = [Gadget("posix", frozenset({"system"}), "runs a shell command", ()),
           Gadget("builtins", frozenset({"eval", "exec"}), "executes Python source", ()),
           Gadget("subprocess", frozenset(), "starts processes", ())]

COMMAND = re.compile(r"::(?P<level>error|warning|notice) (?P<props>[^:]*)::(?P<data>.*)\Z")


def unescape_data(value: str) -> str:
    return value.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def unescape_property(value: str) -> str:
    return unescape_data(value.replace("%3A", ":").replace("%2C", ","))


def parse(line: str) -> dict[str, str]:
    """Read a workflow command back the way the runner does (escaped ':' and ',' in values)."""
    match = COMMAND.match(line)
    assert match, line
    props = dict(item.split("=", 1) for item in match["props"].split(","))
    return {"level": match["level"], "data": unescape_data(match["data"]),
            **{key: unescape_property(value) for key, value in props.items()}}


def one_file(path: str, *findings: Finding, status: Status = Status.VIOLATION,
             error: str | None = None) -> ScanResult:
    return ScanResult(files=(FileResult(path, "pickle", status, findings=findings,
                                        error=error),), policy="p")


def not_allowed(module: str, name: str, member: str | None = None,
                offset: int | None = 7) -> Finding:
    return Finding(FindingKind.NOT_ALLOWED, f"{module}.{name} is not allowed by policy",
                   module=module, name=name, member=member, offset=offset)


# ---------------------------------------------------------------------------------------------
# golden files


def test_annotations_golden():
    check_golden("sample.github.txt", github.render(sample_result()))


def test_summary_golden():
    check_golden("sample.summary.md", github.summary_markdown(sample_result(), gadgets=GADGETS))


# ---------------------------------------------------------------------------------------------
# annotations


def test_one_command_per_finding_and_error_then_a_plain_summary_line():
    result = sample_result()
    lines = github.render(result).splitlines()
    expected = sum(len(f.findings) + (f.status is Status.ERROR) for f in result.files)
    commands, last = lines[:-1], lines[-1]
    assert len(commands) == expected
    for line in commands:
        assert line.startswith(("::error file=", "::warning file=")), line
        assert ",line=1,title=picklegate (" in line
    assert not last.startswith("::") and last.startswith("picklegate: 6 file(s) scanned")


def test_warnings_use_the_warning_command():
    lines = github.render(sample_result()).splitlines()
    [warning] = [line for line in lines if line.startswith("::warning")]
    assert parse(warning)["file"] == "models/big.bin"
    assert parse(warning)["title"] == "picklegate (lfs-pointer)"


def test_commands_parse_back_to_path_title_and_message():
    result = sample_result()
    expected = []
    for f in sorted(result.files, key=lambda x: x.path):
        if f.status is Status.ERROR:
            expected.append(("error", f.path, "picklegate (scan-error)", f"{f.path}: {f.error}"))
        for x in sorted(f.findings, key=lambda x: x.sort_key):
            expected.append(("warning" if x.warning else "error", f.path,
                             f"picklegate ({x.kind.value})", github.annotation_message(f.path, x)))
    parsed = [parse(line) for line in github.render(result).splitlines()[:-1]]
    assert [(p["level"], p["file"], p["title"], p["data"]) for p in parsed] == expected
    assert all(p["line"] == "1" for p in parsed)
    assert {SPACED, INJECTY} <= {p["file"] for p in parsed}


@pytest.mark.parametrize("path, relpath, expected", [
    ("./models/evil.pkl", "models/evil.pkl", "models/evil.pkl"),   # scan with no paths
    ("deep/../models/evil.pkl", "models/evil.pkl", "models/evil.pkl"),
    ("./models/evil.pkl", None, "models/evil.pkl"),                 # outside a repository
    ("./a/./b//evil.pkl", None, "a/b/evil.pkl"),
    ("/abs/evil.pkl", None, "/abs/evil.pkl"),
])
def test_annotations_and_summary_use_repository_relative_paths(path, relpath, expected):
    """GitHub attaches an annotation to a diff path; ``./models/evil.pkl`` matches none."""
    finding = not_allowed("posix", "system")
    result = ScanResult(files=(FileResult(path, "pickle", Status.VIOLATION, findings=(finding,),
                                          relpath=relpath),), policy="p")
    first = parse(github.render(result).splitlines()[0])
    assert first["file"] == expected
    assert first["data"].startswith(f"{expected}: offset 7: posix.system")
    summary = github.summary_markdown(result, gadgets=[])
    assert f"| `{expected}` |" in summary and "./" not in summary


def test_message_has_member_and_offset():
    line = next(line for line in github.render(sample_result()).splitlines()
                if "posix.system" in line)
    data = parse(line)["data"]
    assert "[archive/data.pkl]" in data and "offset 17" in data and "(2 occurrences)" in data


def test_escaping_matches_actions_toolkit():
    assert github.escape_data("a%b\r\nc:d,e") == "a%25b%0D%0Ac:d,e"
    assert github.escape_property("a%b\r\nc:d,e") == "a%25b%0D%0Ac%3Ad%2Ce"
    assert github.escape_property("%2C") == "%252C"      # '%' first, so nothing is decoded twice


def test_injection_attempts_do_not_create_commands():
    path = "a,b::c\n::error::x.pkl"
    member = "m\r\n::warning file=z::pwned%0A::error::y"
    finding = dataclasses.replace(not_allowed("posix", "system\n::error::n", member), count=1)
    result = ScanResult(policy="p\n::error::from-policy", files=(
        FileResult(path, "pickle", Status.VIOLATION, findings=(finding,)),
        FileResult("e\n::error::f.pkl", "unknown", Status.ERROR, error="cannot\n::error::read"),
    ))
    out = github.render(result)
    assert "\r" not in out
    lines = out.split("\n")
    assert lines[-1] == ""
    commands = [line for line in lines if line.lstrip().startswith("::")]
    assert len(commands) == 2 and len(lines) == 4          # 2 commands, summary, final ""
    first, second = parse(commands[0]), parse(commands[1])
    assert first["file"] == text.safe(path)
    assert first["data"] == github.annotation_message(path, finding)
    # names are shown escaped (text.safe): a line break or ANSI escape is displayed, not obeyed
    assert text.safe(member) in first["data"] and "offset 7" in first["data"]
    assert second["file"] == "e\\n::error::f.pkl"
    assert second["data"] == "e\\n::error::f.pkl: cannot\\n::error::read"
    assert lines[2].endswith("(policy: p\\n::error::from-policy)")


def test_properties_cannot_end_early():
    for line in github.render(sample_result()).splitlines()[:-1]:
        head, _, _ = line[2:].partition("::")
        # Everything before the first '::' is the command and its escaped properties.
        assert head.count("=") == 3, line


# ---------------------------------------------------------------------------------------------
# job summary


def test_summary_heading_counts_and_table():
    md = github.summary_markdown(sample_result(), gadgets=GADGETS)
    assert md.startswith("### ❌ picklegate found problems\n")
    assert "**6** file(s) scanned: 2 clean, 3 with violations, 1 unreadable; 6 finding(s), " \
           "1 warning(s)" in md
    assert "| File | Member | Offset | Global | Kind | Message |" in md
    assert "| `models/my model, v2: final.pt` | `archive/data.pkl` | 17 | `posix.system` | " \
           "gadget |" in md
    assert "| `models/missing.pkl` |  |  |  | scan-error |" in md
    assert "lfs-pointer (warning)" in md


def _rows(md: str) -> list[str]:
    """The table's header and body rows (not the |---| delimiter row)."""
    return [line for line in md.splitlines() if line.startswith("| ")]


def _unescaped_pipes(row: str) -> int:
    return len(re.findall(r"(?<!\\)\|", row))


def _outside_code_spans(row: str) -> str:
    return re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", row)


def test_summary_cells_are_escaped():
    md = github.summary_markdown(sample_result(), gadgets=GADGETS)
    rows = _rows(md)
    assert all(_unescaped_pipes(row) == 7 for row in rows), rows
    assert "``archive/payload\\|<img src=x>`.pkl``" in md
    for row in rows:
        assert "<" not in _outside_code_spans(row), row


def test_summary_escapes_hostile_names():
    member = "x|y\n## heading <script>alert(1)</script> ``` [a](https://evil.example)"
    path = "` evil|path\r\n| a | b |"
    md = github.summary_markdown(one_file(path, not_allowed("posix", "system", member)),
                                 gadgets=[])
    rows = _rows(md)
    assert len(rows) == 2                                 # header, one finding
    row = rows[1]
    assert _unescaped_pipes(row) == 7
    outside = _outside_code_spans(row)
    assert "<" not in outside and "[" not in outside and "#" not in outside, outside
    assert "\\n## heading" in row and "\\r\\n" in row      # line breaks shown, not obeyed
    assert "\n## heading" not in md


def test_summary_is_valid_utf8_for_undecodable_names(tmp_path: Path):
    result = one_file("b\udcffd.pkl", not_allowed("posix", "system", "m\udc80"))
    md = github.summary_markdown(result, gadgets=[])
    md.encode("utf-8")                                       # strict: no lone surrogates
    assert "`b\\udcffd.pkl`" in md


def test_code_span_keeps_content_literal():
    assert github._code("plain") == "`plain`"
    assert github._code("a`b") == "``a`b``"
    assert github._code("`x`") == "`` `x` ``"
    assert github._code("a|b") == "`a\\|b`"
    assert github._code("") == ""
    long = github._code("x" * 5000)
    assert len(long) < github.MAX_CELL + 10 and long.endswith("…`")


def test_summary_without_findings():
    md = github.summary_markdown(one_file("ok.pkl", status=Status.CLEAN), gadgets=[])
    assert md.startswith("### ✅ picklegate: no violations\n")
    assert "| File |" not in md and "<details>" not in md


def _snippet(md: str) -> str:
    match = re.search(r"<details>\n<summary>.*?</summary>\n\n(`{3,})yaml\n(.*?)\1\n\n</details>",
                      md, re.S)
    assert match, md
    return match.group(2)


def test_summary_has_a_reviewable_allow_snippet():
    md = github.summary_markdown(sample_result(), gadgets=GADGETS)
    snippet = _snippet(md)
    assert "REVIEW EVERY ENTRY" in snippet
    assert yaml.safe_load(snippet) == {"allow": {"mylib.layers": ["Dense"]}}
    # Known gadgets are named in a comment, never offered as entries.
    assert "#   posix.system: runs a shell command" in snippet
    assert "#   builtins.exec: executes Python source" in snippet
    assert "<summary>Allow entries for 1 not-allowed global(s)" in md


def test_snippet_without_gadget_list_offers_every_not_allowed_global_but_no_gadget():
    snippet = _snippet(github.summary_markdown(sample_result(), gadgets=[]))
    # gadget findings are never offered, whatever list the caller passes
    assert yaml.safe_load(snippet) == {"allow": {"mylib.layers": ["Dense"]}}
    result = one_file("m.pkl", not_allowed("posix", "system"), not_allowed("mylib", "Dense"))
    assert yaml.safe_load(github.allow_snippet(result, gadgets=[])) == {"allow": {
        "mylib": ["Dense"], "posix": ["system"]}}


def test_snippet_is_a_valid_policy_that_allows_exactly_those_globals(tmp_path):
    globals_ = [("pkg.mod", "Thing"), ("pkg.mod", "Other.inner"), ("yes", "no"),
                ("pkg", "true"), ("pkg", "we'ird\"\\nam\u00e9\U0001f600"), ("lib", "a*"),
                ("lib", "null"), ("lib", "-x"), ("lib", "#x")]
    result = ScanResult(policy="p", files=tuple(
        FileResult(f"m{i}.pkl", "pickle", Status.VIOLATION, findings=(not_allowed(m, n),))
        for i, (m, n) in enumerate(globals_)))
    snippet = github.allow_snippet(result, gadgets=[])
    assert snippet.isascii()
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("version: 1\n" + snippet, encoding="utf-8")
    policy = load_policy(policy_file)
    for module, name in globals_:
        assert policy.decide(module, name).verdict is Verdict.ALLOWED, (module, name)
    assert policy.decide("pkg.mod", "Unlisted").verdict is not Verdict.ALLOWED
    assert policy.decide("pkg", "anything").verdict is not Verdict.ALLOWED


def test_snippet_leaves_out_what_a_policy_cannot_name_or_must_not_allow():
    result = ScanResult(policy="p", files=(FileResult("m.pkl", "pickle", Status.VIOLATION,
                                                      findings=(
        not_allowed("os", "*"),                              # would allow every name in os
        not_allowed("evil\nmodule", "x"),
        not_allowed("weird-module", "x"),
        not_allowed("pkg", "has space"),
        not_allowed("subprocess", "Popen"),                  # a gadget module
        not_allowed("posix", "system.__call__"),             # reached through a gadget
        not_allowed("fine", "Name"),
        Finding(FindingKind.DENIED, "builtins.eval is denied", module="builtins", name="eval"),
    )),))
    snippet = github.allow_snippet(result, gadgets=GADGETS)
    assert yaml.safe_load(snippet) == {"allow": {"fine": ["Name"]}}
    assert "# 4 global(s) left out" in snippet
    assert "#   posix.system.__call__: runs a shell command" in snippet
    assert "#   subprocess.Popen: starts processes" in snippet
    assert "builtins" not in snippet                         # denied globals are not offered


def test_snippet_with_only_unnameable_globals_has_no_empty_allow():
    snippet = github.allow_snippet(one_file("m.pkl", not_allowed("os", "*")), gadgets=[])
    assert "allow:" not in snippet and yaml.safe_load(snippet) is None


def test_snippet_fence_cannot_be_closed_by_names():
    md = github.summary_markdown(one_file("m.pkl", not_allowed("pkg", "```x"),
                                          not_allowed("pkg", "````")), gadgets=[])
    snippet = _snippet(md)
    assert yaml.safe_load(snippet) == {"allow": {"pkg": ["````", "```x"]}}


def test_summary_is_capped_under_the_limit():
    findings = tuple(not_allowed("mod", f"name{i}", member="archive/" + "m" * 300, offset=i)
                     for i in range(20))
    result = one_file("big.pt", *findings)
    md = github.summary_markdown(result, limit=4000, gadgets=[])
    assert len(md.encode()) <= 4000
    shown = len(_rows(md)) - 1
    assert 0 < shown < 20
    assert f"_… and {20 - shown} more finding(s)" in md
    assert "<details>" in md                                  # the snippet survives the cut


def test_default_summary_stays_under_one_mebibyte():
    findings = tuple(not_allowed(f"mod{i % 50}", f"name{i}", member="m" * 200, offset=i)
                     for i in range(20000))
    md = github.summary_markdown(one_file("huge.pt", *findings), gadgets=[])
    assert len(md.encode()) < 1024 * 1024
    assert "more finding(s)" in md


def test_write_step_summary_appends(tmp_path: Path):
    target = tmp_path / "summary.md"
    env = {"GITHUB_STEP_SUMMARY": str(target)}
    assert github.write_step_summary(sample_result(), env) is True
    first = target.read_text(encoding="utf-8")
    assert "posix.system" in first
    assert github.write_step_summary(sample_result(), env) is True
    both = target.read_text(encoding="utf-8")
    assert both.startswith(first)
    assert both.count("### ❌ picklegate found problems") == 2


def test_write_step_summary_keeps_earlier_content(tmp_path: Path):
    target = tmp_path / "summary.md"
    target.write_text("earlier step", encoding="utf-8")
    github.write_step_summary(sample_result(), {"GITHUB_STEP_SUMMARY": str(target)})
    assert target.read_text(encoding="utf-8").startswith("earlier step\n### ")


@pytest.mark.parametrize("env", [{}, {"GITHUB_STEP_SUMMARY": ""}, {"OTHER": "x"}])
def test_write_step_summary_without_the_variable(env, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "from-os-environ.md"))
    assert github.write_step_summary(sample_result(), env) is False
    assert list(tmp_path.iterdir()) == []                    # os.environ is never consulted


def test_known_gadgets_is_a_list():
    assert isinstance(github.known_gadgets(), list)
