"""What the API server checks before it accepts a CustomResourceDefinition (apiextensions.k8s.io/v1).

``crd_errors`` mirrors apiextensions-apiserver's validation of a new CRD for the parts a generated
schema can get wrong, each error in the API server's words, as ``path: message``:

- the OpenAPI schema (validation.go, ValidateCustomResourceDefinitionOpenAPISchema and
  specStandardValidatorV3): known keywords only, valid types, no ``$ref``, ``uniqueItems``,
  ``patternProperties``, ``additionalItems``, ``definitions`` or ``dependencies``,
  ``additionalProperties`` and ``properties`` mutually exclusive, no defaults in the top-level
  ``metadata``, ``apiVersion`` or ``kind``, well-formed ``x-kubernetes-list-type``,
  ``x-kubernetes-list-map-keys`` (keys are scalar properties of object items, required or
  defaulted, not nullable) and ``x-kubernetes-map-type``, and well-formed
  ``x-kubernetes-validations`` (rule, message, reason, fieldPath, oldSelf only where old and new
  values can be correlated, a boolean result), within the estimated cost limits;
- structural schemas (schema/validation.go, ValidateStructural): every node typed unless
  ``x-kubernetes-int-or-string`` or ``x-kubernetes-preserve-unknown-fields``, arrays with
  ``items``, an object at the root without ``additionalProperties``, root ``metadata`` that
  restricts nothing but ``name`` and ``generateName``, patterns that Go's RE2 compiles;
- the root when the status subresource is on: only the keywords allowed there, not nullable;
- defaults (defaulting/validation.go, ValidateDefaults), checked once the schema is structural:
  each default is valid against its node, including the CEL rules of the node and its children
  (with the default as both ``self`` and ``oldSelf``), and has no field the schema would prune;
- printer columns (ValidateCustomResourceColumnDefinition): a name, a known type and format and a
  simple JSONPath; beyond what the server checks, the path must name a field of the schema or of
  standard object metadata, as a column that never resolves shows nothing.

It is stricter than the API server in one way: ``allOf``, ``anyOf``, ``oneOf`` and ``not`` are
refused outright, where Kubernetes allows them under conditions the generator never needs.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import cel
import jsonschema

from internvl_operator.validation import cel_problems
from tests.unit.operator.cel_cost import (
    STATIC_ESTIMATED_COST_LIMIT,
    STATIC_ESTIMATED_CRD_COST_LIMIT,
    crd_rule_costs,
    estimate,
    with_type_and_object_meta,
)
from tests.unit.operator.cel_syntax import parse, references

SCHEMA_KEYWORDS = {
    "id", "$schema", "$ref", "description", "type", "format", "title", "default", "maximum", "exclusiveMaximum",
    "minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
    "multipleOf", "enum", "maxProperties", "minProperties", "required", "items", "allOf", "oneOf", "anyOf", "not",
    "properties", "additionalProperties", "patternProperties", "dependencies", "additionalItems", "definitions",
    "externalDocs", "example", "nullable", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys", "x-kubernetes-list-type", "x-kubernetes-map-type",
    "x-kubernetes-validations",
}  # fmt: skip
# validation.go: allowedFieldsAtRootSchema, as JSON names.
ROOT_KEYWORDS_WITH_STATUS = {
    "description", "type", "format", "title", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf", "required", "items",
    "properties", "externalDocs", "example", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations",
}  # fmt: skip
OPENAPI_TYPES = {"string", "number", "integer", "boolean", "array", "object"}
VALIDATION_REASONS = {"FieldValueRequired", "FieldValueForbidden", "FieldValueInvalid", "FieldValueDuplicate"}
PRINTER_COLUMN_TYPES = {"integer", "number", "string", "boolean", "date"}
PRINTER_COLUMN_FORMATS = {"int32", "int64", "float", "double", "byte", "date", "date-time", "password"}
OBJECT_META_FIELDS = {
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences", "finalizers",
    "managedFields",
}  # fmt: skip
_RESOURCE_META = ("metadata", "apiVersion", "kind")
_PERL_ONLY_GROUPS = ("(?=", "(?!", "(?<=", "(?<!", "(?>", "(?(")


def _re2_error(pattern: str) -> str | None:
    """Why Go's regexp (RE2) would not compile ``pattern``, as far as Python's ``re`` can tell:
    Perl syntax RE2 lacks (lookaround, atomic and conditional groups, backreferences, possessive
    quantifiers, \\Z), or a pattern that is no regular expression at all."""
    index, in_class = 0, False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            escaped = pattern[index + 1 : index + 2]
            if not in_class and (escaped in tuple("123456789") or escaped == "Z"):
                return f"invalid escape sequence: \\{escaped}"
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            index += 2 if pattern[index + 1 : index + 2] == "]" else 3 if pattern[index + 1 : index + 3] == "^]" else 1
            continue
        elif pattern.startswith(_PERL_ONLY_GROUPS, index):
            return f"invalid or unsupported Perl syntax: {pattern[index : index + 3]!r}"
        elif char in "*+?}" and pattern[index + 1 : index + 2] == "+":
            return f"invalid nested repetition operator: {pattern[index : index + 2]!r}"
        index += 1
    try:
        re.compile(pattern)
    except re.error as error:
        return str(error)
    return None


def _child_path(path: str, key: str) -> str:
    return f"{path}.properties[{key}]"


def _openapi_errors(node: dict, path: str, *, root: bool, defaults_forbidden: str, uncorrelatable: str) -> list[str]:
    """ValidateCustomResourceDefinitionOpenAPISchema and specStandardValidatorV3 on one node and
    its children."""
    errors = [f"{path}.{key}: unknown field" for key in node if key not in SCHEMA_KEYWORDS]
    kind = node.get("type")
    if kind is not None and kind not in OPENAPI_TYPES:
        errors.append(f"{path}.type: Unsupported value: {kind!r}")
    if "default" in node and defaults_forbidden:
        errors.append(f"{path}.default: Forbidden: must not be set {defaults_forbidden}")
    for key, message in (
        ("id", "id is not supported"),
        ("$ref", "$ref is not supported"),
        ("additionalItems", "additionalItems is not supported"),
        ("patternProperties", "patternProperties is not supported"),
        ("definitions", "definitions is not supported"),
        ("dependencies", "dependencies is not supported"),
        ("allOf", "not written by the generator, so not checked here"),
        ("anyOf", "not written by the generator, so not checked here"),
        ("oneOf", "not written by the generator, so not checked here"),
        ("not", "not written by the generator, so not checked here"),
    ):
        if key in node:
            errors.append(f"{path}.{key}: Forbidden: {message}")
    if node.get("uniqueItems"):
        errors.append(f"{path}.uniqueItems: Forbidden: uniqueItems cannot be set to true")
    if "properties" in node and "additionalProperties" in node and node["additionalProperties"] is not True:
        errors.append(
            f"{path}.additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
        )
    if node.get("x-kubernetes-preserve-unknown-fields") is False:
        errors.append(f"{path}.x-kubernetes-preserve-unknown-fields: Invalid value: must be true or undefined")
    declared = with_type_and_object_meta(node) if root else node
    errors += (
        _map_type_errors(node, path) + _list_type_errors(node, path) + _rule_errors(declared, path, uncorrelatable)
    )
    if "pattern" in node and (reason := _re2_error(node["pattern"])):
        errors.append(f"{path}.pattern: Invalid value: must be a valid regular expression, but isn't: {reason}")

    children_uncorrelatable = uncorrelatable or (path if node.get("x-kubernetes-map-type") == "atomic" else "")
    for key, child in node.get("properties", {}).items():
        forbidden = f"in top-level {key}" if root and key in _RESOURCE_META else defaults_forbidden
        errors += _openapi_errors(
            child,
            _child_path(path, key),
            root=False,
            defaults_forbidden=forbidden,
            uncorrelatable=children_uncorrelatable,
        )
    if isinstance(node.get("additionalProperties"), dict):
        errors += _openapi_errors(
            node["additionalProperties"],
            f"{path}.additionalProperties",
            root=False,
            defaults_forbidden=defaults_forbidden,
            uncorrelatable=uncorrelatable,
        )
    if isinstance(node.get("items"), dict):
        items_uncorrelatable = uncorrelatable or ("" if node.get("x-kubernetes-list-type") == "map" else path)
        errors += _openapi_errors(
            node["items"],
            f"{path}.items",
            root=False,
            defaults_forbidden=defaults_forbidden,
            uncorrelatable=items_uncorrelatable,
        )
    elif "items" in node:
        errors.append(f"{path}.items: Forbidden: items must be a schema object and not an array")
    return errors


def _map_type_errors(node: dict, path: str) -> list[str]:
    if "x-kubernetes-map-type" not in node:
        return []
    errors = []
    if node.get("type") != "object":
        errors.append(f"{path}.type: Invalid value: must be object if x-kubernetes-map-type is specified")
    if node["x-kubernetes-map-type"] not in ("atomic", "granular"):
        errors.append(f"{path}.x-kubernetes-map-type: Unsupported value: {node['x-kubernetes-map-type']!r}")
    return errors


def _list_type_errors(node: dict, path: str) -> list[str]:
    list_type, keys = node.get("x-kubernetes-list-type"), node.get("x-kubernetes-list-map-keys", [])
    items = node.get("items") if isinstance(node.get("items"), dict) else None
    errors = []
    if list_type is not None and node.get("type") != "array":
        errors.append(f"{path}.type: Invalid value: must be array if x-kubernetes-list-type is specified")
    if list_type not in (None, "atomic", "set", "map"):
        errors.append(f"{path}.x-kubernetes-list-type: Unsupported value: {list_type!r}")
    if keys and list_type != "map":
        errors.append(f"{path}.x-kubernetes-list-type: must be map if x-kubernetes-list-map-keys is non-empty")
    if list_type in ("set", "map") and items is not None and items.get("nullable"):
        errors.append(
            f"{path}.items.nullable: Forbidden: cannot be nullable when x-kubernetes-list-type is {list_type}"
        )
    if list_type == "set" and items is not None:
        if items.get("type") == "array" and items.get("x-kubernetes-list-type", "atomic") != "atomic":
            errors.append(f"{path}.items.x-kubernetes-list-type: must be atomic as item of a list with set type")
        if items.get("type") == "object" and items.get("x-kubernetes-map-type") != "atomic":
            errors.append(f"{path}.items.x-kubernetes-map-type: must be atomic as item of a list with set type")
    if list_type != "map":
        return errors
    if not keys:
        errors.append(f"{path}.x-kubernetes-list-map-keys: Required value: must not be empty if list-type is map")
    if items is None:
        return [*errors, f"{path}.items: Required value: must have a schema if x-kubernetes-list-type is map"]
    if items.get("type") != "object":
        return [*errors, f"{path}.items.type: Invalid value: must be object if parent array's list-type is map"]
    if len(set(keys)) != len(keys):
        errors.append(f"{path}.x-kubernetes-list-map-keys: Invalid value: must not contain duplicate entries")
    for key in keys:
        key_path = _child_path(f"{path}.items", key)
        prop = items.get("properties", {}).get(key)
        if prop is None:
            errors.append(
                f"{path}.x-kubernetes-list-map-keys: Invalid value: entries must all be names of item properties"
            )
            continue
        if prop.get("type") in ("array", "object"):
            errors.append(f"{key_path}.type: Invalid value: must be a scalar type if parent array's list-type is map")
        listed = "this property is in x-kubernetes-list-map-keys, so it"
        if key not in items.get("required", []) and "default" not in prop:
            errors.append(f"{key_path}.default: Required value: {listed} must have a default or be a required property")
        if prop.get("nullable"):
            errors.append(f"{key_path}.nullable: Forbidden: {listed} cannot be nullable")
    return errors


def _field_path_resolves(node: dict, field_path: str) -> bool:
    """cel.ValidFieldPath: ``.name`` and ``['name']`` select a property or map entry, ``[n]`` a
    list item."""
    rest = field_path
    while rest:
        match = re.match(r"\.([A-Za-z_][A-Za-z0-9_]*)|\['((?:[^'\\]|\\.)*)'\]|\[(\d+)\]", rest)
        if match is None:
            return False
        name, quoted, index = match.groups()
        if index is not None:
            if node.get("type") != "array":
                return False
            node = node["items"]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif (name or quoted) in node.get("properties", {}):
            node = node["properties"][name or quoted]
        else:
            return False
        rest = rest[match.end() :]
    return True


def _rule_errors(node: dict, path: str, uncorrelatable: str) -> list[str]:
    errors = []
    for index, rule in enumerate(node.get("x-kubernetes-validations", [])):
        where = f"{path}.x-kubernetes-validations[{index}]"
        text, message = rule.get("rule", "").strip(), rule.get("message")
        if not text:
            errors.append(f"{where}.rule: Required value: rule is not specified")
            continue
        if message is not None and not message.strip():
            errors.append(f"{where}.message: Invalid value: message must be non-empty if specified")
        elif message is not None and re.search(r"[\n\r]", message.strip()):
            errors.append(f"{where}.message: Invalid value: message must not contain line breaks")
        elif re.search(r"[\n\r]", text) and not message:
            errors.append(f"{where}.message: Required value: message must be specified if rule contains line breaks")
        if "reason" in rule and rule["reason"] not in VALIDATION_REASONS:
            errors.append(f"{where}.reason: Unsupported value: {rule['reason']!r}")
        if "fieldPath" in rule and not _field_path_resolves(node, rule["fieldPath"].strip()):
            errors.append(f"{where}.fieldPath: Invalid value: fieldPath must be a valid path")
        try:
            cel.compile(text)
            tree = parse(text)
            _, result = estimate(text, node)
        except Exception as error:  # the parsers and the type checks raise their own exception types
            errors.append(f"{where}.rule: Invalid value: compilation failed: {error}")
            continue
        if result not in ("bool", "dyn"):
            errors.append(f"{where}.rule: Invalid value: cel expression must evaluate to a bool")
        if references(tree, "oldSelf") and uncorrelatable:
            errors.append(
                f"{where}.rule: Invalid value: oldSelf cannot be used on the uncorrelatable portion of the schema "
                f"within {uncorrelatable}"
            )
    return errors


def _structural_errors(node: dict, path: str, *, level: str) -> list[str]:
    """ValidateStructural (validateStructuralInvariants) on one node and its children; ``level``
    is root, item or field."""
    errors = []
    preserve, int_or_string = node.get("x-kubernetes-preserve-unknown-fields"), node.get("x-kubernetes-int-or-string")
    if node.get("type") == "array" and "items" not in node:
        errors.append(f"{path}.items: Required value: must be specified")
    if "additionalProperties" in node and level == "root":
        errors.append(f"{path}.additionalProperties: Forbidden: must not be used at the root")
    if int_or_string and preserve:
        errors.append(f"{path}.x-kubernetes-preserve-unknown-fields: Invalid value: must be false if int-or-string")
    if node.get("x-kubernetes-embedded-resource") and node.get("type") != "object":
        errors.append(f"{path}.type: Invalid value: must be object if x-kubernetes-embedded-resource is true")
    elif "type" not in node and not int_or_string and not preserve:
        where = {"root": "at the root", "item": "for specified array items", "field": "for specified object fields"}
        errors.append(f"{path}.type: Required value: must not be empty {where[level]}")
    if level == "root" and node.get("type", "object") != "object":
        errors.append(f"{path}.type: Invalid value: must be object at the root")
    resource_root = level == "root" or node.get("x-kubernetes-embedded-resource")
    properties = node.get("properties", {})
    if resource_root:
        for key in ("kind", "apiVersion"):
            if key in properties and properties[key].get("type") != "string":
                errors.append(f"{_child_path(path, key)}.type: Invalid value: must be string")
        if "metadata" in properties:
            errors += _metadata_errors(properties["metadata"], _child_path(path, "metadata"), level)
    for key, child in properties.items():
        errors += _structural_errors(child, _child_path(path, key), level="field")
    if isinstance(node.get("additionalProperties"), dict):
        errors += _structural_errors(node["additionalProperties"], f"{path}.additionalProperties", level="field")
    if isinstance(node.get("items"), dict):
        errors += _structural_errors(node["items"], f"{path}.items", level="item")
    return errors


def _metadata_errors(metadata: dict, path: str, level: str) -> list[str]:
    """validateStructuralMetadataInvariants: metadata is an object, and at the root it may
    restrict nothing but name and generateName."""
    errors = [] if metadata.get("type") == "object" else [f"{path}.type: Invalid value: must be object"]
    if level != "root":
        return errors
    rest = {key: value for key, value in metadata.items() if key not in ("type", "default")}
    if set(rest.get("properties", {})) <= {"name", "generateName"}:
        rest.pop("properties", None)
    if rest:
        errors.append(
            f"{path}: Forbidden: must not specify anything other than name and generateName, "
            "but metadata is implicitly specified"
        )
    return errors


def pruned(value: Any, node: dict) -> Any:
    """``value`` without the fields the API server prunes (pruning.Prune)."""
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [pruned(item, node["items"]) for item in value]
    if not isinstance(value, dict) or node.get("type") != "object":
        return value
    if isinstance(node.get("additionalProperties"), dict):
        return {key: pruned(child, node["additionalProperties"]) for key, child in value.items()}
    properties, keep = node.get("properties", {}), node.get("x-kubernetes-preserve-unknown-fields")
    return {
        key: pruned(child, properties[key]) if key in properties else child
        for key, child in value.items()
        if key in properties or keep
    }


def _default_errors(node: dict, path: str, *, root: bool = False) -> list[str]:
    """ValidateDefaults: every default outside resource metadata is valid against its node (the
    schema and the CEL rules below it, with the default as self and oldSelf) and is pruned."""
    errors = []
    if "default" in node and not root:
        default = node["default"]
        if pruned(copy.deepcopy(default), node) != default:
            errors.append(f"{path}.default: Invalid value: must not have unknown fields")
        schema_errors = list(jsonschema.Draft4Validator(node).iter_errors(default))
        errors += [f"{path}.default: Invalid value: {error.message}" for error in schema_errors]
        if not schema_errors:
            errors += [f"{path}.default: {problem}" for problem in cel_problems(node, default, default)]
    for key, child in node.get("properties", {}).items():
        if not (root and key in _RESOURCE_META):
            errors += _default_errors(child, _child_path(path, key))
    if isinstance(node.get("items"), dict):  # additionalProperties are not followed: no defaults there
        errors += _default_errors(node["items"], f"{path}.items")
    return errors


def _cost_errors(schema: dict, path: str) -> list[str]:
    costs = crd_rule_costs(schema)
    errors = [
        f"{path}.{cost.path}: Forbidden: estimated rule cost {cost.total} exceeds budget {STATIC_ESTIMATED_COST_LIMIT}"
        for cost in costs
        if cost.total > STATIC_ESTIMATED_COST_LIMIT
    ]
    total = sum(cost.total for cost in costs)
    if total > STATIC_ESTIMATED_CRD_COST_LIMIT:
        errors.append(f"{path}: Forbidden: estimated rule cost total {total} exceeds {STATIC_ESTIMATED_CRD_COST_LIMIT}")
    return errors


def schema_errors(schema: dict, *, status_subresource: bool, path: str = "openAPIV3Schema") -> list[str]:
    """Everything the API server refuses in one version's openAPIV3Schema."""
    errors = []
    if status_subresource and set(schema) - ROOT_KEYWORDS_WITH_STATUS:
        allowed = sorted(ROOT_KEYWORDS_WITH_STATUS)
        errors.append(
            f"{path}: Invalid value: only {allowed} fields are allowed at the root of the schema if the status "
            f"subresource is enabled, got {sorted(set(schema) - ROOT_KEYWORDS_WITH_STATUS)}"
        )
    if schema.get("nullable"):
        errors.append(f"{path}.nullable: Forbidden: nullable cannot be true at the root")
    errors += _openapi_errors(schema, path, root=True, defaults_forbidden="", uncorrelatable="")
    errors += _structural_errors(schema, path, level="root")
    if errors:
        return errors  # the API server checks defaults of structural schemas, costs of compiled rules
    return _default_errors(schema, path, root=True) + _cost_errors(schema, path)


def _column_path_errors(schema: dict, json_path: str, where: str) -> list[str]:
    parts = json_path[1:].split(".")
    if parts[0] in ("apiVersion", "kind") and len(parts) == 1:
        return []
    if parts[0] == "metadata" and len(parts) == 2 and parts[1] in OBJECT_META_FIELDS:
        return []
    node = with_type_and_object_meta(schema)
    for part in parts:
        node = node.get("properties", {}).get(part)
        if node is None:
            return [f"{where}: Invalid value: {json_path!r} names no field of the schema"]
    return []


def printer_column_errors(schema: dict, columns: list[dict], path: str) -> list[str]:
    """ValidateCustomResourceColumnDefinition, and that each column's JSONPath names a field."""
    errors = []
    for index, column in enumerate(columns):
        where = f"{path}[{index}]"
        if not column.get("name"):
            errors.append(f"{where}.name: Required value")
        if column.get("type") not in PRINTER_COLUMN_TYPES:
            errors.append(f"{where}.type: Invalid value: must be one of {','.join(sorted(PRINTER_COLUMN_TYPES))}")
        if "format" in column and column["format"] not in PRINTER_COLUMN_FORMATS:
            errors.append(f"{where}.format: Invalid value: must be one of {','.join(sorted(PRINTER_COLUMN_FORMATS))}")
        json_path = column.get("jsonPath", "")
        if not json_path.startswith("."):
            errors.append(f"{where}.JSONPath: Invalid value: must be a simple json path starting with .")
        else:
            errors += _column_path_errors(schema, json_path, f"{where}.JSONPath")
    return errors


def crd_errors(crd: dict) -> list[str]:
    """Everything the API server would refuse in a CustomResourceDefinition's versions."""
    errors = []
    for index, version in enumerate(crd["spec"]["versions"]):
        path = f"spec.versions[{index}]"
        schema = version["schema"]["openAPIV3Schema"]
        status = "status" in version.get("subresources", {})
        errors += schema_errors(schema, status_subresource=status, path=f"{path}.schema.openAPIV3Schema")
        errors += printer_column_errors(
            schema, version.get("additionalPrinterColumns", []), f"{path}.additionalPrinterColumns"
        )
    return errors
