"""`picklegate approve`: add or update one ``approved`` entry, keeping the policy as written.

The runtime dependency stays PyYAML only, and PyYAML cannot write a file back with its
comments (yaml.dump loses them all and re-flows every value). So the text is never re-dumped:
it is edited where PyYAML's composer says the nodes are: each node carries start_mark/end_mark
(line, column and character index into the text). An update replaces the scalar values of
the entry's own keys and adds the missing ones under them; a new entry goes after the last
item of the ``approved`` list, or a new ``approved:`` block at the end of the file. Every byte
outside those spans is kept, comments and CRLF line ends included. The result is read again by
the normal loader before it is written (policyfile.validated), and written atomically.

A round-trip YAML library (ruamel.yaml) would do the same edits through an API, but it would
become a second runtime dependency of a security gate for one subcommand; the edit here is
narrow (scalars and one block-list item) and checked by the real loader afterwards.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from dataclasses import dataclass

import yaml

from picklegate.errors import UsageError
from picklegate.policyfile import yaml_string

CHUNK = 1 << 20


@dataclass(frozen=True)
class NewApproval:
    path: str                   # repository-relative, forward slashes
    sha256: str
    reason: str
    owner: str | None = None
    expires: dt.date | None = None

    def fields(self) -> list[tuple[str, str]]:
        """The keys an entry gets, in the order the policy schema documents them."""
        out = [("path", yaml_string(self.path)), ("sha256", self.sha256),
               ("reason", yaml_string(self.reason))]
        if self.owner is not None:
            out.append(("owner", yaml_string(self.owner)))
        if self.expires is not None:
            out.append(("expires", self.expires.isoformat()))
        return out


def file_sha256(path: str) -> str:
    """The sha256 of a regular file, read in 1 MiB chunks (never whole in memory)."""
    digest = hashlib.sha256()
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UsageError(f"{path} is not a regular file")
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


@dataclass(frozen=True)
class _Edit:
    start: int
    end: int
    text: str


def approve_text(text: str, new: NewApproval) -> tuple[str, bool]:
    """The policy text with ``new`` approved, and whether an entry for the path existed."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        raise UsageError("the policy is not a block mapping; picklegate approve edits "
                         "policies written one key per line")
    nl = "\r\n" if "\r\n" in text else "\n"
    for key, value in root.value:
        if key.value == "approved":
            edits, updated = _into(text, key, value, new, nl)
            return _apply(text, edits), updated
    return _apply(text, [_append_block(text, root, new, nl)]), False


def _apply(text: str, edits: list[_Edit]) -> str:
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[:edit.start] + edit.text + text[edit.end:]
    return text


def _item(new: NewApproval, dash: int, content: int, nl: str) -> str:
    lines = [f"{' ' * content}{key}: {value}" for key, value in new.fields()]
    lines[0] = " " * dash + "-" + lines[0][dash + 1:]
    return nl.join(lines) + nl


def _append_block(text: str, root: yaml.MappingNode, new: NewApproval, nl: str) -> _Edit:
    indent = root.start_mark.column
    lead = "" if not text or text.endswith("\n") else nl
    block = f"{lead}{nl}{' ' * indent}approved:{nl}" + _item(new, indent + 2, indent + 4, nl)
    return _Edit(len(text), len(text), block)


def _into(text: str, key: yaml.Node, value: yaml.Node, new: NewApproval,
          nl: str) -> tuple[list[_Edit], bool]:
    dash = key.start_mark.column + 2
    if _is_empty(value):
        # "approved:", "approved: ~" or "approved: []": drop the value, the list goes under it.
        start, end = value.start_mark.index, value.end_mark.index
        at = _after_line(text, end)
        if not text[end:at].strip():         # nothing after it: no trailing blank either
            start = len(text[:start].rstrip(" "))
        edits = [_Edit(start, end, "")]
        return edits + [_Edit(at, at, _lead(text, at, nl) + _item(new, dash, dash + 2, nl))], False
    if not isinstance(value, yaml.SequenceNode) or value.flow_style:
        raise UsageError("approved: is written as a flow list ([...]); write it as a block "
                         "list (one '- path: ...' entry per item) so picklegate approve can "
                         "edit it")
    for item in value.value:
        if isinstance(item, yaml.MappingNode) and _item_path(item) == new.path:
            return _update(text, item, new, nl), True
    dash = value.start_mark.column
    first = value.value[0]
    content = first.start_mark.column if isinstance(first, yaml.MappingNode) else dash + 2
    at = _after_line(text, _end(value.value[-1], text))
    return [_Edit(at, at, _lead(text, at, nl) + _item(new, dash, content, nl))], False


def _is_empty(node: yaml.Node) -> bool:
    if isinstance(node, yaml.ScalarNode):
        return node.tag == "tag:yaml.org,2002:null"
    return isinstance(node, yaml.SequenceNode) and not node.value


def _item_path(item: yaml.MappingNode) -> str | None:
    for key, value in item.value:
        if key.value == "path" and isinstance(value, yaml.ScalarNode):
            return str(value.value).lstrip("/")
    return None


def _update(text: str, item: yaml.MappingNode, new: NewApproval, nl: str) -> list[_Edit]:
    """New values for the keys the entry has; the missing ones added after its last key."""
    have = {k.value: v for k, v in item.value}
    edits = []
    missing = []
    for key, value in new.fields()[1:]:
        node = have.get(key)
        if node is None:
            missing.append((key, value))
        else:
            edits.append(_replace_scalar(text, node, value))
    if missing:
        if item.flow_style:
            at = item.end_mark.index - 1            # before the closing "}"
            edits.append(_Edit(at, at, "".join(f", {k}: {v}" for k, v in missing)))
        else:
            at = _after_line(text, _end(item, text))
            column = item.start_mark.column
            edits.append(_Edit(at, at, _lead(text, at, nl) + "".join(
                f"{' ' * column}{k}: {v}{nl}" for k, v in missing)))
    return edits


def _replace_scalar(text: str, node: yaml.Node, value: str) -> _Edit:
    start, end = node.start_mark.index, _end(node, text)
    if not isinstance(node, yaml.ScalarNode):
        raise UsageError(f"line {node.start_mark.line + 1}: expected a single value here")
    return _Edit(start, end, value)


def _end(node: yaml.Node, text: str) -> int:
    """Where a node's own text ends: for a block collection, the end of its last value (its
    end_mark is the start of whatever follows, comments included); for a block scalar (| or
    >), before the line break that ends it."""
    if isinstance(node, yaml.MappingNode) and not node.flow_style and node.value:
        return _end(node.value[-1][1], text)
    if isinstance(node, yaml.SequenceNode) and not node.flow_style and node.value:
        return _end(node.value[-1], text)
    end = int(node.end_mark.index)
    if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
        while end > node.start_mark.index and text[end - 1] in "\r\n":
            end -= 1
    return end


def _after_line(text: str, index: int) -> int:
    """The start of the line after the one ``index`` is on (the end of the text if none)."""
    newline = text.find("\n", index)
    return len(text) if newline < 0 else newline + 1


def _lead(text: str, at: int, nl: str) -> str:
    """A line break to put first when inserting at the very end of a text without one."""
    return nl if at == len(text) and text and not text.endswith("\n") else ""
