"""How long offline validation of an InternVLFinetune takes, and what each layer costs.

The operator validates every object it handles, and ``internvl-operator validate`` runs in CI on
whole folders, so the models plus CEL rules must stay cheap next to a generic JSON-schema check.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

from benchmarks import Table, seconds_per_call
from internvl_operator.crd import crd_schema
from internvl_operator.validation import parse, validate

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "full-internvl2_5-26b.yaml"


def run() -> list[Table]:
    obj = yaml.safe_load(EXAMPLE.read_text())
    schema = crd_schema()
    schema_validator = jsonschema.Draft4Validator(schema)
    alternatives = [
        ("pydantic models only", lambda: parse(obj)),
        ("pydantic models + CEL rules (`validate`)", lambda: validate(obj)),
        ("pydantic models + CEL rules, update with `oldSelf`", lambda: validate(obj, obj)),
        ("jsonschema Draft 4 on the generated CRD schema", lambda: schema_validator.validate(obj)),
    ]
    timings = [(label, seconds_per_call(function)) for label, function in alternatives]
    baseline = timings[0][1]
    return [
        Table(
            title="Offline validation of one InternVLFinetune",
            method=(
                f"`{EXAMPLE.name}` (a full fine-tune that sets most fields), validated in one process; best of 5"
                " timings, each averaged over at least 0.2 s of calls."
            ),
            columns=["Check", "Time per object", "Objects per second", "Relative to models only"],
            rows=[
                [label, f"{seconds * 1e3:.3f} ms", f"{1 / seconds:,.0f}", f"{seconds / baseline:.1f}x"]
                for label, seconds in timings
            ],
        )
    ]
