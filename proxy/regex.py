"""Path regular expressions: the one module that knows the regex engine (RE2).

ingress-nginx turns the paths of a host with `use-regex` (or `rewrite-target`) into nginx
locations `~* "^<path>"` (PCRE, case-insensitive, anchored at the start) and rewrites with the
same expression. Portico compiles those paths here, once per snapshot, on both sides: the
controller's compiler calls `compile_path` to validate each path before it is published (an
invalid one is a problem on its Ingress, never a worker's), the worker's route table and rewrite
steps call it to build what runs per request.

RE2 rather than Python's `re` (a backtracking engine, as PCRE is): a path comes from an Ingress
anyone with write access to one namespace can create, and a pattern like `/(a+)+$` would let a
crafted request hold a worker for seconds with `re`. RE2 matches in time linear in the path,
whatever the pattern. What RE2 lacks (backreferences, lookaround, possessive quantifiers) makes
`compile_path` raise `PatternError` saying so. Bounds: the pattern's length
(`MAX_PATTERN_LENGTH`) and RE2's memory budget for the compiled program and its DFA cache
(`MAX_PROGRAM_MEMORY`; a pattern whose program exceeds it, e.g. nested counted repetitions, does
not compile, and a match that would exceed the DFA cache falls back to RE2's linear NFA).

Matching runs on the request path's bytes (paths are routed raw, undecoded: a latin-1 `str`
here), with RE2's Latin-1 mode, so a request path is never re-encoded as UTF-8. The binding used
is `re2._re2` (the C++ object of the google-re2 wheel): its Python `re2.Pattern` layer costs
about four times as much per match (3.8 against 0.9 us measured), for offset conversions paths
do not need. Swapping the engine is a change of this module alone.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from re2 import _re2  # type: ignore[import-untyped,unused-ignore]

# A path pattern longer than this is refused (ingress-nginx paths are short; a long one is
# either a mistake or an attempt at a large program).
MAX_PATTERN_LENGTH: Final = 1024
# RE2's memory budget per compiled pattern (program and DFA cache; RE2's default is 8 MiB).
# 256 KiB holds any realistic path expression, and bounds what 10,000 regex rules can take in
# every worker.
MAX_PROGRAM_MEMORY: Final = 256 * 1024

_ANCHOR_START: Final = _re2.RE2.Anchor.ANCHOR_START
_NO_SPAN: Final = (-1, -1)

# RE2's error text for the PCRE features it does not have, with what to say instead.
_UNSUPPORTED: Final = (
    ("invalid escape sequence: \\1", "backreferences (\\1 ...) are not supported (RE2)"),
    ("invalid perl operator: (?=", "lookahead (?= ...) is not supported (RE2)"),
    ("invalid perl operator: (?!", "negative lookahead (?! ...) is not supported (RE2)"),
    ("invalid perl operator: (?<", "lookbehind (?<= ... or (?<! ...) is not supported (RE2)"),
    ("bad repetition operator: ++", "possessive quantifiers (++ ...) are not supported (RE2)"),
    ("bad repetition operator: *+", "possessive quantifiers (*+ ...) are not supported (RE2)"),
    (
        "pattern too large",
        f"the expression is too large (over {MAX_PROGRAM_MEMORY} bytes of compiled program)",
    ),
)


class PatternError(ValueError):
    """A path that is not a usable regular expression; the message says why."""


def _compile(pattern: str, options: object, subject: str) -> Any:
    """RE2's program for `pattern` with `options`, within the bounds, or PatternError saying
    why (what RE2 lacks named as such); `subject` is what the pattern matches, for messages."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"longer than {MAX_PATTERN_LENGTH} characters")
    try:
        raw = pattern.encode("latin-1")
    except UnicodeEncodeError:
        raise PatternError(f"only Latin-1 characters can match {subject}") from None
    compiled = _re2.RE2(raw, options)
    if not compiled.ok():
        error = compiled.error().decode("utf-8", "replace")
        for known, reason in _UNSUPPORTED:
            if error.startswith(known):
                raise PatternError(reason)
        raise PatternError(f"not a valid regular expression: {error}")
    return compiled


def _options() -> object:
    options = _re2.RE2.Options()
    options.case_sensitive = False  # nginx `~*`
    options.max_mem = MAX_PROGRAM_MEMORY
    options.log_errors = False  # the caller reports the error where it belongs
    options.encoding = _re2.RE2.Options.Encoding.LATIN1
    return options


_OPTIONS: Final = _options()


class PathPattern:
    """One compiled path expression, matched at the start of a path (nginx `~* "^<path>"`)."""

    __slots__ = ("_re", "groups", "pattern")

    def __init__(self, pattern: str, compiled: object, groups: int) -> None:
        self.pattern = pattern
        self._re = compiled
        self.groups = groups  # the number of capture groups ($1 .. $groups)

    def matches(self, path: bytes) -> bool:
        """Whether the path starts with a match."""
        spans: list[tuple[int, int]] = self._re.Match(_ANCHOR_START, path, 0, len(path))  # type: ignore[attr-defined]
        return spans[0] != _NO_SPAN

    def captures(self, path: bytes) -> list[bytes] | None:
        """$0 (the match) and every group (b"" when a group took no part), or None."""
        spans: list[tuple[int, int]] = self._re.Match(_ANCHOR_START, path, 0, len(path))  # type: ignore[attr-defined]
        if spans[0] == _NO_SPAN:
            return None
        return [b"" if start < 0 else path[start:end] for start, end in spans]


@functools.lru_cache(maxsize=4096)
def compile_path(pattern: str) -> PathPattern:
    """The compiled expression of a path, or PatternError. Cached: a snapshot's table and its
    rewrite steps, and the next snapshots, share one compiled object per pattern."""
    compiled = _compile(pattern, _OPTIONS, "a request path")
    return PathPattern(pattern, compiled, int(compiled.NumberOfCapturingGroups()))


# ---- header patterns (canary-by-header-pattern) ------------------------------------------------

_UNANCHORED: Final = _re2.RE2.Anchor.UNANCHORED


def _header_options() -> object:
    options = _re2.RE2.Options()
    options.max_mem = MAX_PROGRAM_MEMORY
    options.log_errors = False
    options.encoding = _re2.RE2.Options.Encoding.LATIN1
    return options


_HEADER_OPTIONS: Final = _header_options()


class HeaderPattern:
    """One compiled field-value expression, searched anywhere in the value and case-sensitive
    (ingress-nginx's canary-by-header-pattern: `ngx.re.match(value, pattern)` without options)."""

    __slots__ = ("_re", "pattern")

    def __init__(self, pattern: str, compiled: object) -> None:
        self.pattern = pattern
        self._re = compiled

    def search(self, value: bytes) -> bool:
        """Whether the expression matches somewhere in the value."""
        spans: list[tuple[int, int]] = self._re.Match(_UNANCHORED, value, 0, len(value))  # type: ignore[attr-defined]
        return spans[0] != _NO_SPAN


@functools.lru_cache(maxsize=1024)
def compile_header_pattern(pattern: str) -> HeaderPattern:
    """The compiled expression of a header pattern, or PatternError (same bounds and messages
    as paths)."""
    compiled = _compile(pattern, _HEADER_OPTIONS, "a field value")
    return HeaderPattern(pattern, compiled)
