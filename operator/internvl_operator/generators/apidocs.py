"""docs/api.md: the field reference, generated from the same schemas as the CRD.

One table per section with every field's dotted path, type and bounds, default and
description, followed by the section's validation rules.
``python -m internvl_operator.generators.apidocs --output docs/api.md`` writes it; a test fails
when the committed file is stale.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from internvl_operator.api import InternVLFinetuneSpec, InternVLFinetuneStatus
from internvl_operator.crd import openapi_schema
from internvl_trainer.config import TrainConfig

HEADER = """\
# API reference

Generated from the pydantic models by `make docs`; do not edit. `kubectl explain
internvlfinetune.spec` shows the same descriptions. Unset optional fields take the value the
description names; "recipe" means InternVL's official fine-tuning recipe for the model size,
filled in by the planner.
"""


def _type(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    kind = node["type"]
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return "object (free-form)"
    if kind == "array":
        return f"list of {_type(node['items'])}"
    if kind == "object" and "additionalProperties" in node:
        return f"map of {_type(node['additionalProperties'])}"
    bounds = []
    if "minimum" in node:
        bounds.append(f"{'>' if node.get('exclusiveMinimum') else '≥'} {node['minimum']}")
    if "maximum" in node:
        bounds.append(f"{'<' if node.get('exclusiveMaximum') else '≤'} {node['maximum']}")
    if "maxLength" in node:
        bounds.append(f"≤ {node['maxLength']} chars")
    if "maxItems" in node:
        bounds.append(f"≤ {node['maxItems']} items")
    if node.get("format") == "date-time":
        kind = "timestamp"
    return f"{kind} ({', '.join(bounds)})" if bounds else kind


def _default(node: dict[str, Any]) -> str:
    return f"`{node['default']}`" if "default" in node and node["default"] != {} else ""


def _rows(node: dict[str, Any], prefix: str) -> list[str]:
    rows = []
    required = set(node.get("required", []))
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        mark = " (required)" if name in required else ""
        description = child.get("description", "").replace("|", "\\|")
        rows.append(f"| `{path}`{mark} | {_type(child)} | {_default(child)} | {description} |")
        rows += _rows(child, path)
        if child.get("type") == "array":
            rows += _rows(child["items"], f"{path}[]")
    return rows


def _rules(node: dict[str, Any], prefix: str) -> list[str]:
    found = [
        f"- `{prefix or '.'}`: {rule['message']} (`{rule['rule']}`)"
        for rule in node.get("x-kubernetes-validations", [])
    ]
    for name, child in node.get("properties", {}).items():
        found += _rules(child, f"{prefix}.{name}" if prefix else name)
    return found


def _section(title: str, intro: str, schema: dict[str, Any], prefix: str) -> str:
    lines = [f"## {title}", "", intro, "", "| Field | Type | Default | Description |", "|---|---|---|---|"]
    lines += _rows(schema, prefix)
    rules = _rules(schema, prefix)
    if rules:
        lines += ["", "Validation rules (CEL, enforced by the API server and by `internvl-operator validate`):", ""]
        lines += rules
    return "\n".join(lines) + "\n"


def api_markdown() -> str:
    """The whole docs/api.md."""
    sections = [
        _section(
            "InternVLFinetune spec",
            "`apiVersion: internvl.dev/v1alpha1`, `kind: InternVLFinetune` (short name `ivft`, category `ml`).",
            openapi_schema(InternVLFinetuneSpec),
            "spec",
        ),
        _section(
            "InternVLFinetune status",
            "Written by the operator, except progress, which the trainer reports (docs/contract.md §4).",
            openapi_schema(InternVLFinetuneStatus),
            "status",
        ),
        _section(
            "train.yaml (TrainConfig)",
            "The trainer's input; see docs/contract.md. The operator renders it fully resolved.",
            openapi_schema(TrainConfig),
            "",
        ),
    ]
    return HEADER + "\n" + "\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description="write the API reference")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    args.output.write_text(api_markdown())


if __name__ == "__main__":
    main()
