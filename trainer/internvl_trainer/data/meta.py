"""InternVL's meta file: a JSON (or YAML) object naming each dataset's media root and annotation file.

Keys are InternVL's own (snake_case), so meta files written for InternVL's scripts work unchanged.
"""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from internvl_trainer.problems import BadInput, Problem, parse_yaml_documents, problems_from, read_text


class DatasetMeta(BaseModel):
    """One dataset of a meta file."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    root: str
    """Folder (or S3 prefix) that image and video paths of the annotations are relative to."""
    annotation: Annotated[str, Field(pattern=r"\.jsonl?$")]
    """The annotation file: JSON lines, one sample per line (or a JSON array)."""
    data_augment: bool = False
    """Whether images get InternVL's training augmentation."""
    repeat_time: Annotated[float, Field(gt=0)] = 1.0
    """How often the dataset is seen per epoch: below 1 a seeded random subset, above 1 repeats."""
    length: Annotated[int, Field(ge=0)] | None = None
    """Number of samples, as InternVL's meta files state it (informational)."""
    max_dynamic_patch: Annotated[int, Field(ge=1, le=40)] | None = None
    """Tile cap for this dataset, overriding the run's maximum tiles."""


class MetaFile(RootModel[dict[str, DatasetMeta]]):
    """A meta file: dataset name to dataset."""

    root: Annotated[dict[str, DatasetMeta], Field(min_length=1)]


def parse_meta(text: str, source: str) -> MetaFile:
    """The meta file in ``text`` (JSON, or YAML when ``source`` ends in .yaml or .yml). Raises
    BadInput naming ``source`` and the line of a syntax error, or each field that is wrong."""
    if source.endswith((".yaml", ".yml")):
        documents = parse_yaml_documents(text, source)
        document = documents[0] if len(documents) == 1 else documents
    else:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            where = f"{source}:{error.lineno}:{error.colno}"
            raise BadInput([Problem(where, f"invalid JSON: {error.msg}")]) from error
    try:
        return MetaFile.model_validate(document)
    except ValidationError as error:
        raise BadInput(problems_from(error)) from error


def read_meta(path: str) -> MetaFile:
    """The meta file at a local ``path``. Raises BadInput."""
    return parse_meta(read_text(path), path)
