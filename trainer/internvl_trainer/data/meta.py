"""InternVL's meta file: a JSON (or YAML) object naming each dataset's media root and annotation file.

Keys are InternVL's own (snake_case), so meta files written for InternVL's scripts work unchanged
(reference: internvl-recipe.md §1.3)::

    {"charts": {"root": "s3://data/charts/images", "annotation": "s3://data/charts/train.jsonl",
                "data_augment": false, "repeat_time": 0.5, "length": 1200, "max_dynamic_patch": 6}}

Differences from InternVL, all of them supersets:

- ``repeat_time`` may be fractional above 1 (1.5: every sample once plus a seeded random half)
  and below 1 takes a seeded random subset, not the first lines (``data.sampling``).
- ``weight`` (optional, default 1) makes a dataset's samples denser in the mixed order.
- The keys of the InternVL3 fine-tuning guide's variant are accepted: ``train`` for
  ``annotation`` and ``image_folder`` for ``root``; the annotation may be a JSON array (``.json``)
  as well as JSON lines (``.jsonl``).
- ``root`` may be left out: media paths are then relative to the annotation file's folder.
- Relative ``root`` and ``annotation`` paths are relative to the meta file's own folder (or S3
  prefix), so a dataset folder with its meta file can be moved or uploaded as a whole.
- ``data_augment`` is optional (default false); InternVL's finetune script requires it.
- ``length`` is informational, as in InternVL (it is never used to size anything).
"""

from __future__ import annotations

import json
import posixpath
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, model_validator

from internvl_trainer.problems import BadInput, Problem, decode_text, parse_yaml_documents, problems_from, read_text

if TYPE_CHECKING:
    from internvl_trainer.storage import Location

GUIDE_KEYS = {"train": "annotation", "image_folder": "root"}
"""Keys of the InternVL3 fine-tuning guide's meta files and the InternVL keys they stand for."""


class DatasetMeta(BaseModel):
    """One dataset of a meta file."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    root: str
    """Folder (or S3 prefix) that image and video paths of the annotations are relative to
    (``image_folder`` in the guide's variant). Unset: the annotation file's folder."""
    annotation: Annotated[str, Field(pattern=r"\.jsonl?$")]
    """The annotation file: JSON lines, one sample per line, or a JSON array of samples (``train``
    in the guide's variant)."""
    data_augment: bool = False
    """Whether images get InternVL's training augmentation."""
    repeat_time: Annotated[float, Field(gt=0, le=1000)] = 1.0
    """How often the dataset is seen per epoch: below 1 a seeded random subset, above 1 whole
    repeats plus a seeded random subset for the fraction."""
    length: Annotated[int, Field(ge=0)] | None = None
    """Number of samples, as InternVL's meta files state it (informational)."""
    max_dynamic_patch: Annotated[int, Field(ge=1, le=40)] | None = None
    """Tile cap for this dataset, overriding the run's maximum tiles."""
    weight: Annotated[float, Field(gt=0, le=1e6)] = 1.0
    """Relative sampling density of this dataset's samples in the mixed order."""

    @model_validator(mode="before")
    @classmethod
    def _guide_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for guide, key in GUIDE_KEYS.items():
            if guide in data:
                if key in data:
                    raise ValueError(f"give {key!r} or {guide!r} (the same thing), not both")
                data[key] = data.pop(guide)
        if "root" not in data and isinstance(data.get("annotation"), str):
            data["root"] = _folder_of(data["annotation"])
        return data


class MetaFile(RootModel[dict[str, DatasetMeta]]):
    """A meta file: dataset name to dataset."""

    root: Annotated[dict[str, DatasetMeta], Field(min_length=1)]

    def resolved(self, base: str) -> MetaFile:
        """The meta file with relative ``root`` and ``annotation`` paths made relative to ``base``
        (the meta file's folder: an ``s3://`` prefix or a local folder)."""
        return MetaFile(
            {
                name: dataset.model_copy(
                    update={"root": join_uri(base, dataset.root), "annotation": join_uri(base, dataset.annotation)}
                )
                for name, dataset in self.root.items()
            }
        )


def _folder_of(uri: str) -> str:
    folder = uri.rsplit("/", 1)[0] if "/" in uri else ""
    return folder or "."


def is_absolute(uri: str) -> bool:
    """Whether ``uri`` names a place on its own: an ``s3://`` or ``file:`` URI or an absolute path."""
    return uri.startswith(("s3://", "file:", "/"))


def join_uri(base: str, path: str) -> str:
    """``path`` as is when absolute, else below ``base`` (a URI or a local folder)."""
    if is_absolute(path):
        return path
    joined = posixpath.normpath(posixpath.join(base.removeprefix("s3://"), path))
    return f"s3://{joined}" if base.startswith("s3://") else joined


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
        except (RecursionError, ValueError) as error:  # nested too deeply; a number too long to read
            raise BadInput([Problem(source, f"invalid JSON: {error}")]) from None
    try:
        return MetaFile.model_validate(document)
    except ValidationError as error:
        raise BadInput(problems_from(error)) from error


def read_meta(path: str) -> MetaFile:
    """The meta file at a local ``path``, relative paths in it taken as they are. Raises BadInput."""
    return parse_meta(read_text(path), path)


def load_meta(uri: str, storage: Any) -> MetaFile:
    """The meta file at ``uri`` (``s3://`` or local) read through ``storage``, with relative
    paths resolved against its folder. Raises BadInput naming the file when it cannot be read."""
    # Imported here: boto3, below storage, would add 0.4 s to every start of internvl-data, whose
    # module imports this one (--help and argument errors included).
    from internvl_trainer.storage import StorageError, parse

    try:
        data = storage.read_bytes(uri)
    except (StorageError, OSError) as error:
        raise BadInput([Problem(uri, f"cannot read the meta file: {error}")]) from error
    return parse_meta(decode_text(data, uri), uri).resolved(_base_of(parse(uri)))


def _base_of(location: Location) -> str:
    """The folder of a meta file's location (absolute)."""
    if location.is_s3:
        folder = location.key.rsplit("/", 1)[0] if "/" in location.key else ""
        return f"s3://{location.bucket}/{folder}".rstrip("/")
    return str(location.path.parent)
