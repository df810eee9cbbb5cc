"""The generated CRD: fresh, structural, documented, bounded, and accepted by the API server."""

import copy
from typing import Annotated, Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BeforeValidator, Field, StringConstraints

from internvl_operator.corev1 import LIST_MAP_BY_NAME
from internvl_operator.crd import CRD_FILENAME, crd, crd_schema, crd_yaml, openapi_schema
from internvl_operator.generators.apidocs import api_markdown
from internvl_trainer.config import FREE_FORM, Section
from tests.conftest import REPO, load_example
from tests.unit.operator.apiserver_crd import crd_errors

KUBERNETES_VERSION = "1.32.0"
# OpenAPI v3.0 schemas follow JSON Schema draft 4 (exclusiveMinimum is a flag, not a number).
OPENAPI_V3 = jsonschema.Draft4Validator


def walk(node, path="<root>"):
    """Every schema node with its dotted path."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")


def test_committed_crd_is_fresh():
    committed = (REPO / "crds" / CRD_FILENAME).read_text()
    assert committed == crd_yaml(), "crds/ is stale: run `make crds`"


def test_committed_api_reference_is_fresh():
    assert (REPO / "docs" / "api.md").read_text() == api_markdown(), "docs/api.md is stale: run `make docs`"


def test_crd_is_a_valid_apiextensions_object():
    kubernetes_validate.validate(crd(), KUBERNETES_VERSION, strict=True)


def test_names_and_scope():
    spec = crd()["spec"]
    assert spec["group"] == "internvl.dev"
    assert spec["names"] == {
        "kind": "InternVLFinetune",
        "listKind": "InternVLFinetuneList",
        "plural": "internvlfinetunes",
        "singular": "internvlfinetune",
        "shortNames": ["ivft"],
        "categories": ["ml"],
    }
    assert spec["scope"] == "Namespaced"
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_the_api_server_accepts_the_crd():
    assert crd_errors(crd()) == []


def test_root_metadata_says_nothing_but_its_type():
    # The API server owns the schema of metadata; a description there made it refuse the CRD.
    assert crd_schema()["properties"]["metadata"] == {"type": "object"}


def test_every_property_has_a_description():
    undocumented = [
        path
        for path, node in walk(crd_schema())
        if path not in ("<root>", "<root>.metadata")
        and not path.endswith("[]")
        and not path.endswith(".*")
        and not node.get("description")
    ]
    assert undocumented == []


def test_every_string_and_list_is_bounded():
    unbounded = [
        path
        for path, node in walk(crd_schema())
        if (
            node["type"] == "string"
            and "maxLength" not in node
            and "enum" not in node
            and "format" not in node
            and path not in ("<root>.apiVersion", "<root>.kind")
        )
        or (node["type"] == "array" and "maxItems" not in node)
        or (node["type"] == "object" and "additionalProperties" in node and "maxProperties" not in node)
    ]
    assert unbounded == []


def test_exclusive_bounds_are_openapi_v3_flags():
    for path, node in walk(crd_schema()):
        for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if flag in node:
                assert node[flag] is True and isinstance(node[bound], int | float), path


def test_sections_default_to_an_empty_object_so_inner_defaults_apply():
    spec = crd_schema()["properties"]["spec"]["properties"]
    for section in ("method", "training", "resources", "pod", "deepspeed", "storage"):
        assert spec[section]["default"] == {}, section
    assert spec["training"]["properties"]["warmupRatio"]["default"] == 0.03
    assert spec["method"]["properties"]["type"]["default"] == "lora"
    assert "default" not in spec["model"]
    assert spec["method"]["properties"]["lora"]["properties"]["targets"]["default"] == ["llm"]


def test_recipe_values_have_no_default_so_the_planner_fills_them():
    spec = crd_schema()["properties"]["spec"]["properties"]
    assert "default" not in spec["training"]["properties"]["learningRate"]
    assert "default" not in spec["data"]["properties"]["maxTiles"]
    assert "default" not in spec["resources"]["properties"]["gpus"]


Count = Annotated[int, BeforeValidator(lambda value: value)]


class Named(Section):
    """An item with a name."""

    name: Annotated[str, StringConstraints(max_length=8)]
    """Its name."""


class Translated(Section):
    """A model with what the translation to a structural schema must rewrite."""

    free: dict[str, Any] | None = Field(None, json_schema_extra=FREE_FORM)
    """Free-form."""

    count: Count | None = Field(None, ge=1, lt=10)
    """A bounded integer with a validator of its own."""

    labels: dict[Annotated[str, StringConstraints(pattern=r"^[a-z]+$")], str] = Field(default_factory=dict)
    """Keys with a pattern."""

    keyed: list[Named] = Field(default_factory=list, max_length=4, json_schema_extra=LIST_MAP_BY_NAME)
    """A list of items keyed by name."""


def test_free_form_fields_preserve_unknown_fields():
    assert openapi_schema(Translated)["properties"]["free"] == {
        "type": "object",
        "description": "Free-form.",
        "x-kubernetes-preserve-unknown-fields": True,
    }


def test_bounds_pydantic_leaves_under_their_own_names_become_openapi_bounds():
    count = openapi_schema(Translated)["properties"]["count"]
    assert (count["minimum"], count["maximum"], count["exclusiveMaximum"]) == (1, 10, True)
    assert not {"ge", "lt"} & set(count)


def test_maps_with_key_patterns_become_additional_properties():
    labels = openapi_schema(Translated)["properties"]["labels"]
    assert labels["additionalProperties"] == {"type": "string"}
    assert "patternProperties" not in labels


def test_list_types_declared_on_a_field_reach_the_schema():
    keyed = openapi_schema(Translated)["properties"]["keyed"]
    assert (keyed["x-kubernetes-list-type"], keyed["x-kubernetes-list-map-keys"]) == ("map", ["name"])


def test_printer_columns():
    [version] = crd()["spec"]["versions"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Model", "Method", "GPUs", "Status", "Progress", "Age", "Launcher"]
    assert columns["Launcher"] == ".status.plan.launcher"


def test_condition_has_the_shape_of_metav1_condition():
    condition = crd_schema()["properties"]["status"]["properties"]["conditions"]["items"]
    assert set(condition["properties"]) == {
        "type",
        "status",
        "observedGeneration",
        "lastTransitionTime",
        "reason",
        "message",
    }
    assert set(condition["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert condition["properties"]["lastTransitionTime"]["format"] == "date-time"


@pytest.mark.parametrize("example", ["lora-internvl3-8b.yaml", "full-internvl2_5-26b.yaml"])
def test_examples_validate_against_the_openapi_schema(example):
    OPENAPI_V3(crd_schema()).validate(load_example(example))


def test_schema_refuses_what_the_models_refuse():
    bad = load_example("lora-internvl3-8b.yaml")
    bad["spec"]["method"]["lora"] = {"rank": 0}
    with pytest.raises(jsonschema.ValidationError, match="less than the minimum of 1"):
        OPENAPI_V3(crd_schema()).validate(bad)


def test_crd_yaml_starts_with_the_generated_header():
    text = crd_yaml()
    assert text.startswith("# Generated by `internvl-operator crds`")
    assert yaml.safe_load(text) == crd()


# The checker itself: a small CRD it accepts, and each kind of schema the API server refuses.

ITEM = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "value": {"type": "integer"}},
    "required": ["name"],
}
ACCEPTED_SPEC = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16, "pattern": "^[a-z]+$"},
        "size": {"type": "integer", "minimum": 1, "default": 1},
        "items": {
            "type": "array",
            "maxItems": 8,
            "items": {
                **ITEM,
                "x-kubernetes-validations": [{"rule": "self.value == oldSelf.value", "message": "immutable"}],
            },
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
        "tags": {"type": "array", "maxItems": 4, "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
        "window": {
            "type": "object",
            "default": {},
            "properties": {"low": {"type": "integer", "default": 1}, "high": {"type": "integer", "default": 2}},
            "x-kubernetes-validations": [
                {"rule": "!has(self.low) || !has(self.high) || self.low <= self.high", "fieldPath": ".low"}
            ],
        },
        "labels": {"type": "object", "maxProperties": 4, "additionalProperties": {"type": "string"}},
    },
}
COLUMNS = [
    {"name": "Name", "type": "string", "jsonPath": ".spec.name"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def small_crd(spec: dict, metadata: dict | None = None, columns: list | None = None) -> dict:
    root = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": metadata if metadata is not None else {"type": "object"},
            "spec": spec,
        },
    }
    version = {"name": "v1", "served": True, "storage": True, "subresources": {"status": {}}}
    version |= {"additionalPrinterColumns": COLUMNS if columns is None else columns}
    return {"spec": {"versions": [{**version, "schema": {"openAPIV3Schema": root}}]}}


def changed(**properties) -> dict:
    spec = copy.deepcopy(ACCEPTED_SPEC)
    spec["properties"].update(properties)
    return spec


def test_the_checker_accepts_what_the_api_server_accepts():
    assert crd_errors(small_crd(ACCEPTED_SPEC)) == []
    name_only = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 63}}}
    assert crd_errors(small_crd(ACCEPTED_SPEC, metadata=name_only)) == []


UNBOUNDED_STRINGS = {"type": "array", "items": {"type": "string"}}


@pytest.mark.parametrize(
    ("crd_document", "error"),
    [
        (
            small_crd(ACCEPTED_SPEC, metadata={"type": "object", "description": "Standard object metadata."}),
            "properties[metadata]: Forbidden: must not specify anything other than name and generateName",
        ),
        (
            small_crd(ACCEPTED_SPEC, metadata={"type": "object", "properties": {"labels": {"type": "object"}}}),
            "must not specify anything other than name and generateName",
        ),
        (small_crd(changed(name={"maxLength": 3})), "properties[name].type: Required value: must not be empty"),
        (small_crd(changed(list={"type": "array"})), "properties[list].items: Required value: must be specified"),
        (
            small_crd(changed(both={"type": "object", "properties": {}, "additionalProperties": {"type": "string"}})),
            "additionalProperties and properties are mutual exclusive",
        ),
        (small_crd(changed(name={"type": "string", "ge": 1})), "properties[name].ge: unknown field"),
        (
            small_crd(changed(name={"type": "object", "patternProperties": {"^a$": {"type": "string"}}})),
            "patternProperties is not supported",
        ),
        (small_crd(changed(tags={**UNBOUNDED_STRINGS, "uniqueItems": True})), "uniqueItems cannot be set to true"),
        (
            small_crd(changed(items={**ACCEPTED_SPEC["properties"]["items"], "items": {**ITEM, "required": []}})),
            "properties[name].default: Required value: this property is in x-kubernetes-list-map-keys",
        ),
        (
            small_crd(changed(items={**ACCEPTED_SPEC["properties"]["items"], "items": {"type": "string"}})),
            "items.type: Invalid value: must be object",
        ),
        (
            small_crd(changed(items={**ACCEPTED_SPEC["properties"]["items"], "x-kubernetes-list-map-keys": ["no"]})),
            "entries must all be names of item properties",
        ),
        (
            small_crd(changed(tags={**UNBOUNDED_STRINGS, "items": ITEM, "x-kubernetes-list-type": "set"})),
            "items.x-kubernetes-map-type: must be atomic",
        ),
        (
            small_crd(changed(name={"type": "string", "pattern": "^(?!kube-).*$"})),
            "properties[name].pattern: Invalid value: must be a valid regular expression",
        ),
        (
            small_crd(changed(size={"type": "integer", "minimum": 1, "default": 0})),
            "properties[size].default: Invalid value: 0 is less than the minimum of 1",
        ),
        (
            small_crd(changed(window={**ACCEPTED_SPEC["properties"]["window"], "default": {"middle": 1}})),
            "properties[window].default: Invalid value: must not have unknown fields",
        ),
        (
            small_crd(changed(window={**ACCEPTED_SPEC["properties"]["window"], "default": {"low": 3, "high": 2}})),
            "properties[window].default: .low: failed rule",
        ),
        (
            small_crd(
                changed(
                    window={
                        **ACCEPTED_SPEC["properties"]["window"],
                        "x-kubernetes-validations": [{"rule": "self.low <= self.high", "message": "low above high"}],
                    }
                )  # fmt: skip
            ),
            "properties[window].default: ",  # reads fields the empty default does not have
        ),
        (
            small_crd(ACCEPTED_SPEC, metadata={"type": "object", "default": {"name": "x"}}),
            "properties[metadata].default: Forbidden: must not be set in top-level metadata",
        ),
        (
            small_crd(
                changed(name={"type": "string", "x-kubernetes-validations": [{"rule": "true", "reason": "Bad"}]})
            ),
            "x-kubernetes-validations[0].reason: Unsupported value: 'Bad'",
        ),
        (
            small_crd(
                changed(
                    window={
                        **ACCEPTED_SPEC["properties"]["window"],
                        "x-kubernetes-validations": [{"rule": "true", "fieldPath": ".middle"}],
                    }
                )
            ),  # fmt: skip
            "fieldPath: Invalid value: fieldPath must be a valid path",
        ),
        (
            small_crd(
                changed(
                    tags={
                        **UNBOUNDED_STRINGS,
                        "items": {
                            "type": "string",
                            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}],
                        },
                    }
                )
            ),  # fmt: skip
            "oldSelf cannot be used on the uncorrelatable portion of the schema",
        ),
        (
            small_crd(changed(name={"type": "string", "x-kubernetes-validations": [{"rule": "self.size()"}]})),
            "x-kubernetes-validations[0].rule: Invalid value: cel expression must evaluate to a bool",
        ),
        (
            small_crd(
                changed(
                    window={
                        **ACCEPTED_SPEC["properties"]["window"],
                        "x-kubernetes-validations": [{"rule": "self.middle > 0"}],
                    }
                )
            ),  # fmt: skip
            "compilation failed: undefined field 'middle'",
        ),
        (
            small_crd(
                changed(
                    tags={
                        **UNBOUNDED_STRINGS,
                        "x-kubernetes-validations": [{"rule": "self.all(x, self.all(y, x == y))"}],
                    }
                )
            ),  # fmt: skip
            "properties[tags].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost",
        ),
        (
            small_crd(ACCEPTED_SPEC, columns=[{"name": "Size", "type": "integer", "jsonPath": ".spec.sizes"}]),
            "additionalPrinterColumns[0].JSONPath: Invalid value: '.spec.sizes' names no field of the schema",
        ),
        (
            small_crd(ACCEPTED_SPEC, columns=[{"name": "Size", "type": "int", "jsonPath": ".spec.size"}]),
            "additionalPrinterColumns[0].type: Invalid value",
        ),
    ],
)
def test_the_checker_refuses_what_the_api_server_refuses(crd_document, error):
    errors = crd_errors(crd_document)
    assert any(error in e for e in errors), errors
