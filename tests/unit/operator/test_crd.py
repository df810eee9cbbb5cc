"""The generated CRD: fresh, structural, documented, bounded, and accepted by Kubernetes' schema."""

import jsonschema
import kubernetes_validate
import pytest
import yaml

from internvl_operator.apidocs import api_markdown
from internvl_operator.crd import CRD_FILENAME, crd, crd_schema, crd_yaml
from tests.conftest import REPO, load_example

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


def test_every_node_is_typed_and_free_of_json_schema_constructs():
    for path, node in walk(crd_schema()):
        assert "type" in node, path
        for keyword in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "propertyNames"):
            assert keyword not in node, f"{path} has {keyword}"
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path


def test_every_property_has_a_description():
    undocumented = [
        path
        for path, node in walk(crd_schema())
        if path != "<root>" and not path.endswith("[]") and not path.endswith(".*") and not node.get("description")
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


def test_free_form_fields_preserve_unknown_fields():
    pod = crd_schema()["properties"]["spec"]["properties"]["pod"]["properties"]
    assert pod["affinity"] == {
        "type": "object",
        "description": pod["affinity"]["description"],
        "x-kubernetes-preserve-unknown-fields": True,
    }


def test_printer_columns_point_at_fields_of_the_schema():
    [version] = crd()["spec"]["versions"]
    schema = crd_schema()
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Model", "Method", "GPUs", "Status", "Progress", "Age"]
    for name in ("Model", "Method", "GPUs", "Progress"):
        node = schema
        for part in columns[name].strip(".").split("."):
            node = node["properties"][part]
        assert node["type"] in ("string", "integer"), name


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
