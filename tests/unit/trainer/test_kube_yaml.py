"""YAML read as kubectl reads it (sigs.k8s.io/yaml over go-yaml v2), with bounded work."""

import pytest

from internvl_trainer.kube_yaml import MAX_DEPTH, YamlError, load_all


def load(text: str):
    [document] = load_all(text)
    return document


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2024-13-45", "2024-13-45"),  # looks like a date: a string, never a timestamp
        ("2024-01-02", "2024-01-02"),
        ("2001-12-14 21:59:43.10 -5", "2001-12-14 21:59:43.10 -5"),
        ("!!timestamp 2024-1-2T3:04:05Z", "2024-1-2T3:04:05Z"),
        ("y", True),
        ("N", False),
        ("on", True),
        ("Off", False),
        ("'y'", "y"),
        ("~", None),
        ("", None),
        ("1e-5", 1e-5),  # a float to go-yaml, a string to PyYAML's YAML 1.1 rules
        ("1_000", 1000),
        ("0x_1F", 31),
        ("0o17", 15),
        ("0777", 511),
        ("08", 8.0),  # not octal, so go-yaml reads it as a float
        ("-0b101", -5),
        (".5", 0.5),
        ("1:30", "1:30"),  # no base-60 numbers
        ("18446744073709551615", 2**64 - 1),
        ("99999999999999999999", 1e20),
        ("-9223372036854775809", -9.223372036854775809e18),
        ("1e400", "1e400"),  # Go's ParseFloat fails on overflow: the text stays a string
        ("1" * 5000, "1" * 5000),
        ("!!int '12'", 12),
        ("!!float 3", 3.0),
        ("!!bool yes", True),
        ("!!str 12", "12"),
        ("! 12", "12"),
        ("'<<'", "<<"),
    ],
)
def test_scalars_resolve_as_go_yaml_resolves_them(text, value):
    assert load(f"a: {text}") == {"a": value}


def test_map_keys_become_strings_as_sigs_k8s_io_yaml_writes_them():
    expected = {"1": "a", "16": "b", "true": "c", "false": "d", "key": "e"}
    assert load("{1: a, 0x10: b, true: c, n: d, key: e}") == expected


def test_merge_keys_merge_in_document_order_earlier_maps_first():
    text = "base: &b {a: 1, b: 2}\nm:\n  a: 0\n  <<: *b\n  c: 3\nl: {<<: [{a: 1}, {a: 2, b: 2}]}\n"
    assert load(text) == {"base": {"a": 1, "b": 2}, "m": {"a": 1, "b": 2, "c": 3}, "l": {"a": 1, "b": 2}}


def test_documents_and_anchors():
    assert load_all("- &a x\n- *a\n---\n---\nb: 2\n") == [["x", "x"], None, {"b": 2}]


@pytest.mark.parametrize(
    ("text", "line", "column", "reason"),
    [
        ("a: !!int eight", 1, 4, "cannot decode !!str `eight` as a !!int"),
        ("a:\n  b: !!timestamp x", 2, 6, "cannot decode !!str `x` as a !!timestamp"),
        ("a: !!timestamp 2024-13-45", 1, 4, "cannot decode !!str `2024-13-45` as a !!timestamp"),
        ("a: !!int 1.5", 1, 4, "cannot decode !!float `1.5` as a !!int"),
        ("a: !!binary aGVsbG8=", 1, 4, "!!binary values have no JSON form"),
        ("a: !!set {x, y}", 1, 4, "!!set values have no JSON form"),
        ("a: !Ref x", 1, 4, "!Ref values have no JSON form"),
        ("a: .nan", 1, 4, ".nan is not a JSON number"),
        ("a: [-.inf]", 1, 5, "-.inf is not a JSON number"),
        ("{~: a}", 1, 2, "a map key must be a string, got null"),
        ("{1.5: a}", 1, 2, "a map key must be a string, got 1.5"),
        ("? [a]\n: 1", 1, 3, "a map key must be a string, got list"),
        ("a: [*x]", 1, 5, "anchor 'x' is not defined before it is used"),
        ("a: &x [*x]", 1, 8, "anchor 'x' value contains itself"),
        ("l: &l [1]\nm: {<<: *l}", 2, 5, "map merge requires map or sequence of maps as the value"),
        ("a: [1, 2", 2, 1, "did not find expected ',' or ']'"),
    ],
)
def test_what_kubectl_cannot_send_is_refused_with_its_line(text, line, column, reason):
    with pytest.raises(YamlError) as caught:
        load_all(text)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert caught.value.reason.startswith(reason)


def test_a_character_yaml_does_not_allow_names_its_line():
    with pytest.raises(YamlError) as caught:
        load_all("a: 1\nb: \x01\n")
    assert caught.value.line == 2
    assert "U+0001" in caught.value.reason


@pytest.mark.parametrize("style", ["flow", "block"])
def test_nesting_deeper_than_go_yaml_allows_is_refused(style):
    allowed = MAX_DEPTH - 1  # below the document's own mapping
    if style == "flow":
        deep, deeper = (f"a: {'[' * n}{']' * n}" for n in (allowed, allowed + 1))
    else:
        deep, deeper = (f"a:\n{'- ' * n}x\n" for n in (allowed, allowed + 1))
    value = load(deep)["a"]
    for _ in range(allowed - 1):
        [value] = value
    assert value in ([], ["x"])
    with pytest.raises(YamlError, match=f"exceeded max depth of {MAX_DEPTH}"):
        load_all(deeper)


def billion_laughs(levels: int) -> str:
    """Each anchor a list of nine aliases of the one before: 9**levels strings once expanded."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [5, 10, 1000])
def test_an_alias_bomb_is_refused_before_it_is_expanded(levels):
    with pytest.raises(YamlError) as caught:
        load_all(billion_laughs(levels))
    assert caught.value.reason == "document contains excessive aliasing"
    assert caught.value.line <= 5  # refused as soon as the aliases outweigh the document


def test_aliases_that_a_real_file_uses_are_read():
    common = "common: &c {" + ", ".join(f"k{i}: v{i}" for i in range(50)) + "}\n"
    items = "".join(f"- {{<<: *c, name: n{i}}}\n" for i in range(2000))
    document = load(common + "items:\n" + items)
    assert len(document["items"]) == 2000
    assert document["items"][-1] == {**document["common"], "name": "n1999"}
