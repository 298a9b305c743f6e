"""Label and field selectors as the apiserver parses and applies them to list and watch requests.

Label selectors follow apimachinery's `labels.Parse` grammar (`=`, `==`, `!=`, `in`, `notin`,
`key`, `!key`, `>`/`<`); field selectors support `=`, `==`, `!=` on the fields each type declares.
Anything else is a 400 BadRequest, as on a real server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.kubesim.resources import ResourceType
from tests.kubesim.status import ApiError, bad_request

Predicate = Callable[[dict[str, Any]], bool]

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_KEY_RE = re.compile(_KEY, re.ASCII)
_VALUE_RE = re.compile(_VALUE, re.ASCII)
_OPERATORS = frozenset({"!=", "==", "=", ">", "<", "!", "(", ")", ","})
_TOKEN = re.compile(rf"\s*(?:(?P<op>!=|==|=|>|<|!|\(|\)|,)|(?P<word>{_KEY}|{_VALUE}))", re.ASCII)


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...]

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        # ">" / "<" compare integers; a non-integer label never matches.
        try:
            number = int(value) if value is not None else None
        except ValueError:
            return False
        if number is None:
            return False
        bound = int(self.values[0])
        return number > bound if self.op == ">" else number < bound


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise bad_request(f"unable to parse requirement: invalid label selector: {text!r}")
        tokens.append(m.group("op") or m.group("word"))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tokens


def parse_label_selector(text: str) -> Predicate:
    """Compile a label selector into a predicate over whole objects."""
    if not text.strip():
        return lambda obj: True
    tokens = _tokens(text)
    reqs: list[_Requirement] = []
    i = 0

    def fail() -> ApiError:
        return bad_request(f"unable to parse requirement: found invalid label selector {text!r}")

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            raise fail()
        tok = tokens[i]
        i += 1
        return tok

    def key_word() -> str:
        tok = take()
        if not _KEY_RE.fullmatch(tok) or tok in _OPERATORS:
            raise fail()
        return tok

    while i < len(tokens):
        if tokens[i] == "!":
            i += 1
            reqs.append(_Requirement(key_word(), "!", ()))
        else:
            key = key_word()
            nxt = tokens[i] if i < len(tokens) else ","
            if nxt == ",":
                reqs.append(_Requirement(key, "exists", ()))
            elif nxt in ("=", "==", "!="):
                i += 1
                value = tokens[i] if i < len(tokens) and tokens[i] != "," else ""
                if value and (value in _OPERATORS or not _VALUE_RE.fullmatch(value)):
                    raise fail()
                if value:
                    i += 1
                reqs.append(_Requirement(key, "!=" if nxt == "!=" else "=", (value,)))
            elif nxt in (">", "<"):
                i += 1
                bound = take()
                if not bound.lstrip("-").isdigit():
                    raise fail()
                reqs.append(_Requirement(key, nxt, (bound,)))
            elif nxt in ("in", "notin"):
                i += 1
                if take() != "(":
                    raise fail()
                values: list[str] = []
                while True:
                    tok = take()
                    if tok == ")":
                        break
                    if tok == ",":
                        continue
                    if tok in _OPERATORS or not _VALUE_RE.fullmatch(tok):
                        raise fail()
                    values.append(tok)
                reqs.append(_Requirement(key, nxt, tuple(values)))
            else:
                raise fail()
        if i < len(tokens):
            if tokens[i] != ",":
                raise fail()
            i += 1

    def predicate(obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(r.matches(labels) for r in reqs)

    return predicate


def _field_value(obj: dict[str, Any], path: str) -> str:
    if path == "source":  # core Event: `source` means source.component
        path = "source.component"
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict):
            return ""
        node = node.get(part)
    if node is None:
        return ""
    return str(node)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_field_selector(text: str, rt: ResourceType) -> Predicate:
    """Compile a field selector; a field the type does not index is a 400, as on a real server."""
    if not text.strip():
        return lambda obj: True
    terms: list[tuple[str, bool, str]] = []
    for raw in _split_unescaped(text, ","):
        term = raw.strip()
        if not term:
            continue
        for op, negated in (("!=", True), ("==", False), ("=", False)):
            if op in term:
                field, _, value = term.partition(op)
                negate = negated
                break
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        field = field.strip()
        if field not in rt.field_labels:
            raise bad_request(f"field label not supported: {field}")
        terms.append((field, negate, value.strip()))

    def predicate(obj: dict[str, Any]) -> bool:
        return all((_field_value(obj, f) == value) != negate for f, negate, value in terms)

    return predicate


def required_name(text: str) -> str | None:
    """The name a field selector pins (a `metadata.name=x` or `==x` term), else None.

    The apiserver takes it as the request's name when authorizing a list or watch, so a Role
    with `resourceNames` allows listing and watching exactly that object this way.
    """
    for raw in _split_unescaped(text, ","):
        term = raw.strip()
        if "!=" in term:
            continue
        field, _, value = term.replace("==", "=", 1).partition("=")
        value = value.strip()
        # The name must be a valid path segment (apimachinery's IsValidPathSegmentName).
        valid = value not in (".", "..") and "/" not in value and "%" not in value
        if field.strip() == "metadata.name" and valid:
            return value or None
    return None
