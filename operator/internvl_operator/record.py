"""The operator's own record of a run: what it cannot read again from the cluster, kept where the
trainer cannot write.

The status is re-derived on every event, and the trainer's Role lets it patch the status (for
``status.progress``), so the status cannot be the operator's memory. What the cluster no longer
shows is kept in the annotation ``internvl.dev/record`` on the InternVLFinetune instead: a patch
of the status subresource cannot change metadata, so the trainer cannot forge it. It holds the
launcher chosen at the first attempt, the current attempt (failed jobs are deleted), the job the
operator created or adopted for it (by uid), when the first job was created, the latest failure, a
refusal of the API server that waits for a spec change, and the run's result once it ended (its
job may be gone by then: ``ttlSecondsAfterFinished``). A record that cannot be read counts as
none.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from internvl_operator.kubeformats import TOTAL_ANNOTATION_SIZE

RECORD_ANNOTATION = "internvl.dev/record"
# Messages kept in the record are cut to this (lastFailureReason's bound in the status schema).
RECORDED_MESSAGE_MAX = 1024
RECORD_MAX_BYTES = 20 * 1024
"""The most the record's annotation takes, key and value: four messages of RECORDED_MESSAGE_MAX
characters of up to 4 bytes each in UTF-8, and the rest."""

Message = Annotated[str, BeforeValidator(lambda text: text[:RECORDED_MESSAGE_MAX] if isinstance(text, str) else text)]
"""A message or reason kept in the record, cut to RECORDED_MESSAGE_MAX characters."""


class _Entry(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")


class JobRecord(_Entry):
    """The job of the current attempt, as the operator created or adopted it."""

    api_version: str
    kind: str
    name: str
    uid: str | None = None


class Refusal(_Entry):
    """A child the API server refused for a reason that a retry cannot fix: nothing is created
    again until the spec changes."""

    generation: int | None
    message: Message


class Result(_Entry):
    """How the run ended."""

    type: Literal["Succeeded", "Failed"]
    reason: Message
    message: Message
    time: str


class Record(_Entry):
    """What the operator remembers of one InternVLFinetune."""

    attempt: int | None = Field(None, ge=1)
    """The current attempt; unset until the operator first creates children."""
    launcher: str | None = None
    """The launcher of every attempt (internvl_operator.launchers.chosen), set at the first."""
    job: JobRecord | None = None
    start_time: str | None = None
    last_failure_reason: Message | None = None
    refusal: Refusal | None = None
    result: Result | None = None

    def to_annotation(self) -> str:
        return json.dumps(
            self.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True, ensure_ascii=False
        )


def read_record(body: dict[str, Any]) -> Record:
    """The record on an object; an empty one when it has none or it cannot be read."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(RECORD_ANNOTATION) if isinstance(annotations, dict) else None
    if not isinstance(text, str):
        return Record()
    try:
        return Record.model_validate_json(text)
    except ValidationError:
        return Record()


def no_room_for_record(body: dict[str, Any]) -> str | None:
    """Why the record cannot be written on this object (its other annotations leave less than
    RECORD_MAX_BYTES of the API server's limit on all annotations); None when it can."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    taken = sum(
        len(str(key).encode()) + len(str(value).encode())
        for key, value in annotations.items()
        if key != RECORD_ANNOTATION
    )
    if taken + RECORD_MAX_BYTES <= TOTAL_ANNOTATION_SIZE:
        return None
    return (
        f"metadata.annotations take {taken} bytes; the operator keeps its record of the run in the annotation "
        f"{RECORD_ANNOTATION} and needs up to {RECORD_MAX_BYTES} of the {TOTAL_ANNOTATION_SIZE} bytes the API server "
        f"allows for all annotations: remove at least {taken + RECORD_MAX_BYTES - TOTAL_ANNOTATION_SIZE} bytes"
    )


def record_patch(record: Record) -> dict[str, Any]:
    """The merge patch that writes a record on the object."""
    return {"metadata": {"annotations": {RECORD_ANNOTATION: record.to_annotation()}}}
