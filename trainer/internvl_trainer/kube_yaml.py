"""YAML read as Kubernetes reads it: text to JSON values, with the line of every problem.

kubectl and the API server read YAML with sigs.k8s.io/yaml: go-yaml v2 turns the text into values,
which are then converted to JSON. Reading a file the same way makes it mean here what it means to
``kubectl apply``:

- Plain scalars resolve by go-yaml v2's rules: ``y``, ``yes``, ``on``, ``true`` (any of their usual
  capitalisations) and their negatives are booleans; integers are decimal, ``0x``, ``0o``, ``0b``
  or leading-zero octal with ``_`` ignored, up to 64 bits; a date stays the string it is written
  as (go-yaml hands timestamps to JSON as text), so ``2024-13-45`` is a string, not an error.
- An explicit tag must fit its value, as go-yaml checks it: ``!!int eight`` and
  ``!!timestamp x`` are refused.
- Values JSON lacks are refused: ``.nan`` and ``.inf``, ``!!binary``, ``!!set`` and any other tag,
  and map keys that are neither strings, integers nor booleans (integers and booleans become
  strings, as sigs.k8s.io/yaml writes them).
- Merge keys (``<<``) merge as in go-yaml v2: in document order, earlier maps of a merged list
  taking precedence.
- The work is bounded as go-yaml bounds it: nesting deeper than 10,000 is refused, and so is a
  document whose aliases would expand past go-yaml's "excessive aliasing" ratio. The expansion is
  counted on the composed graph (each anchor's expanded size once), before anything walks it.

Events come from libyaml's C parser when PyYAML has it (the pure-Python parser otherwise); they
are composed iteratively, so no nesting the limit allows can overflow Python's stack.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

import yaml

_EVENTS = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""The parser that produces events: libyaml's when PyYAML was built with it."""

MAX_DEPTH = 10_000
"""go-yaml's limit on flow levels and block indents."""

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP, _MERGE = (
    f"{_TAG}{name}" for name in ("str", "int", "float", "bool", "null", "timestamp", "merge")
)
_COLLECTION_TAGS = {
    yaml.MappingStartEvent: (None, "!", f"{_TAG}map"),
    yaml.SequenceStartEvent: (None, "!", f"{_TAG}seq"),
}

# go-yaml v2's resolve table: words that are not strings when written plain.
_WORDS: dict[str, tuple[str, Any]] = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), (_BOOL, True)),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), (_BOOL, False)),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), (_NULL, None)),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), (_FLOAT, math.nan)),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), (_FLOAT, math.inf)),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), (_FLOAT, -math.inf)),
    "<<": (_MERGE, "<<"),
}
# Go's strconv.ParseInt(s, 0, 64) syntax, and go-yaml's float syntax.
_GO_INT = re.compile(r"([+-]?)(?:0[xX]([0-9a-fA-F]+)|0[bB]([01]+)|0[oO]([0-7]+)|0([0-7]*)|([1-9][0-9]*))")
_GO_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_DOT_FLOAT = re.compile(r"\.[0-9]+(?:[eE][-+]?[0-9]+)?")
# The layouts go-yaml v2 parses an explicit !!timestamp with (RFC 3339 with short fields, space
# separated without a zone, a date alone).
_TIMESTAMP_TEXT = re.compile(
    r"(\d{4})-(\d\d?)-(\d\d?)"
    r"(?:[Tt](\d\d?):(\d\d?):(\d\d?)(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)|(?: (\d\d?):(\d\d?):(\d\d?)(?:\.\d+)?))?"
)
# Characters YAML does not allow in a stream (YAML 1.1 §5.1, as libyaml and go-yaml check them).
_NOT_YAML_TEXT = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class YamlError(Exception):
    """YAML that cannot be read as JSON values: the line and column (1-based, when known) and why."""

    def __init__(self, line: int | None, column: int | None, reason: str):
        super().__init__(reason)
        self.line = line
        self.column = column
        self.reason = reason

    @classmethod
    def at(cls, mark: Any, reason: str) -> YamlError:
        return cls(mark.line + 1, mark.column + 1, reason)


def load_all(text: str) -> list[Any]:
    """Every document of ``text`` (None for an empty one) as JSON values. Raises YamlError."""
    bad = _NOT_YAML_TEXT.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise YamlError(line, None, f"character U+{ord(bad.group()):04X} is not allowed in YAML")
    try:
        return _Composer().documents(yaml.parse(text, Loader=_EVENTS))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        reason = error.problem or error.context or str(error)
        raise YamlError.at(mark, reason) if mark else YamlError(None, None, reason) from None
    except yaml.YAMLError as error:
        raise YamlError(None, None, str(error)) from None


def _resolve(text: str) -> tuple[str, Any]:
    """The tag and value go-yaml v2 gives a plain scalar."""
    if text in _WORDS:
        return _WORDS[text]
    first = text[:1]
    if first == "." and _DOT_FLOAT.fullmatch(text):
        value = float(text)
        if not math.isinf(value):  # Go's ParseFloat fails on overflow: the text stays a string
            return _FLOAT, value
    elif first and first in "+-0123456789":
        plain = text.replace("_", "")
        number = _go_int(plain)
        if number is not None:
            return _INT, number
        if _GO_FLOAT.fullmatch(plain):
            value = float(plain)
            if not math.isinf(value):
                return _FLOAT, value
    return _STR, text


def _go_int(text: str) -> int | None:
    """``text`` as Go's ParseInt (int64), else ParseUint (uint64, unsigned), reads it; None if neither."""
    match = _GO_INT.fullmatch(text)
    if not match:
        return None
    sign, *numbers = match.groups()
    bases = (16, 2, 8, 8, 10)
    digits, base = next((digits, base) for digits, base in zip(numbers, bases, strict=True) if digits is not None)
    if len(digits.lstrip("0")) > 64:  # more digits than any 64-bit number has (and than int() reads fast)
        return None
    value = int(digits or "0", base)
    if sign == "-":
        value = -value
    if -(2**63) <= value < 2**63 or (not sign and value < 2**64):
        return value
    return None


def _is_timestamp(text: str) -> bool:
    match = _TIMESTAMP_TEXT.fullmatch(text)
    if not match:
        return False
    numbers = [int(group) for group in match.groups() if group is not None]
    try:
        datetime(*numbers)  # month, day and time in range
    except ValueError:
        return False
    return True


def _short(tag: str) -> str:
    return tag.replace(_TAG, "!!", 1) if tag.startswith(_TAG) else tag


def _scalar(event: yaml.ScalarEvent) -> Any:
    """The JSON value of a scalar. Raises YamlError for a tag that does not fit it or has no JSON form."""
    tag, text = event.tag, event.value
    if tag in ("!", _STR, _MERGE) or (tag is None and not event.implicit[0]):  # quoted, or a string by tag
        return text
    if tag not in (None, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP):
        raise YamlError.at(event.start_mark, f"{_short(tag)} values have no JSON form; write the value as a string")
    if tag == _TIMESTAMP and _is_timestamp(text):
        return text  # go-yaml hands timestamps over as the text they are written as
    resolved, value = _resolve(text)
    if tag == _FLOAT and resolved == _INT:
        resolved, value = _FLOAT, float(value)
    if tag is not None and resolved != tag:
        raise YamlError.at(event.start_mark, f"cannot decode {_short(resolved)} `{text}` as a {_short(tag)}")
    if resolved == _FLOAT and not math.isfinite(value):
        raise YamlError.at(event.start_mark, f"{text} is not a JSON number")
    return value


def _allowed_alias_ratio(decoded: int) -> float:
    """go-yaml's allowedAliasRatio: the share of decoded nodes that may come from aliases."""
    if decoded <= 400_000:
        return 0.99
    if decoded >= 4_000_000:
        return 0.10
    return 0.99 - 0.89 * (decoded - 400_000) / 3_600_000


_NO_KEY = object()


class _Open:
    """A mapping or sequence being composed."""

    __slots__ = ("value", "expanded", "anchor", "mark", "key", "key_mark", "merge")

    def __init__(self, value: dict | list, anchor: str | None, mark: Any):
        self.value = value
        self.expanded = 1
        """Nodes in this collection with every alias in it expanded."""
        self.anchor = anchor
        self.mark = mark
        self.key: Any = _NO_KEY
        """A mapping's key while its value is being composed."""
        self.key_mark: Any = None
        self.merge = False


class _Composer:
    """Turns parser events into JSON values, counting nodes as go-yaml's decoder does."""

    def __init__(self) -> None:
        self.decoded = 0
        """Nodes go-yaml would have decoded so far in this document, aliases expanded."""
        self.aliased = 0
        """Of those, the ones decoded through an alias."""

    def documents(self, events: Any) -> list[Any]:
        documents: list[Any] = []
        stack: list[_Open] = []
        anchors: dict[str, tuple[Any, int]] = {}  # anchor: (value, expanded size)
        for event in events:
            kind = type(event)
            if kind is yaml.ScalarEvent:
                value = _scalar(event)
                if event.anchor:
                    anchors[event.anchor] = (value, 1)
                merge = event.value == "<<" and (event.implicit[0] or event.tag == _MERGE)
                self._add(stack, documents, value, 1, 0, event.start_mark, merge=merge)
            elif kind is yaml.AliasEvent:
                if event.anchor not in anchors:
                    opened = any(frame.anchor == event.anchor for frame in stack)
                    reason = "value contains itself" if opened else "is not defined before it is used"
                    raise YamlError.at(event.start_mark, f"anchor {event.anchor!r} {reason}")
                value, expanded = anchors[event.anchor]
                self._add(stack, documents, value, 1 + expanded, expanded, event.start_mark, alias=True)
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                if event.tag not in _COLLECTION_TAGS[kind]:
                    raise YamlError.at(event.start_mark, f"{_short(event.tag)} values have no JSON form")
                if len(stack) >= MAX_DEPTH:
                    raise YamlError.at(event.start_mark, f"exceeded max depth of {MAX_DEPTH}")
                stack.append(_Open({} if kind is yaml.MappingStartEvent else [], event.anchor, event.start_mark))
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                frame = stack.pop()
                if frame.anchor:
                    anchors[frame.anchor] = (frame.value, frame.expanded)
                self._add(stack, documents, frame.value, frame.expanded, 0, frame.mark)
            elif kind is yaml.DocumentStartEvent:
                anchors.clear()
                self.decoded = self.aliased = 0
        return documents

    def _add(
        self,
        stack: list[_Open],
        documents: list[Any],
        value: Any,
        expanded: int,
        aliased: int,
        mark: Any,
        *,
        alias: bool = False,
        merge: bool = False,
    ) -> None:
        """Put a finished node into its collection (or the documents), counting it."""
        self.decoded += 1 + aliased
        self.aliased += aliased
        if (
            self.aliased > 100
            and self.decoded > 1000
            and self.aliased / self.decoded > _allowed_alias_ratio(self.decoded)
        ):
            raise YamlError.at(mark, "document contains excessive aliasing")
        if not stack:
            documents.append(value)
            return
        parent = stack[-1]
        parent.expanded += expanded
        container = parent.value
        if isinstance(container, list):
            container.append(value)
        elif parent.key is _NO_KEY:
            parent.key, parent.key_mark, parent.merge = _key(value, mark), mark, merge
        else:
            if parent.merge:
                _merge(container, value, alias, parent.key_mark)
            else:
                container[parent.key] = value
            parent.key = _NO_KEY


def _key(value: Any, mark: Any) -> str:
    """A map key as JSON has it: strings as they are, integers and booleans as sigs.k8s.io/yaml writes them."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    shown = "null" if value is None else type(value).__name__ if isinstance(value, list | dict) else repr(value)
    raise YamlError.at(mark, f"a map key must be a string, got {shown}")


def _merge(mapping: dict, value: Any, alias: bool, mark: Any) -> None:
    """``<<: value`` into ``mapping``, as go-yaml v2 merges it."""
    sources = [value] if isinstance(value, dict) else value if isinstance(value, list) and not alias else None
    if sources is None or not all(isinstance(source, dict) for source in sources):
        raise YamlError.at(mark, "map merge requires map or sequence of maps as the value")
    for source in reversed(sources):  # earlier maps take precedence
        mapping.update(source)
