"""The operator's own record of a run: what it cannot read again from the cluster, kept where the
trainer cannot write.

The status is re-derived on every event, and the trainer's Role lets it patch the status (for
``status.progress``), so the status cannot be the operator's memory. What the cluster no longer
shows is kept in the annotation ``internvl.dev/record`` on the InternVLFinetune instead: a patch
of the status subresource cannot change metadata, so the trainer cannot forge it. It holds the
current attempt (failed jobs are deleted), the job the operator created or adopted for it (by
uid), when the first job was created, the latest failure, a refusal of the API server that waits
for a spec change, and the run's result once it ended (its job may be gone by then:
``ttlSecondsAfterFinished``). A record that cannot be read counts as none.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

RECORD_ANNOTATION = "internvl.dev/record"
# Messages kept in the record are cut to this (lastFailureReason's bound in the status schema).
RECORDED_MESSAGE_MAX = 1024


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
    message: str


class Result(_Entry):
    """How the run ended."""

    type: Literal["Succeeded", "Failed"]
    reason: str
    message: str
    time: str


class Record(_Entry):
    """What the operator remembers of one InternVLFinetune."""

    attempt: int | None = Field(None, ge=1)
    """The current attempt; unset until the operator first creates children."""
    job: JobRecord | None = None
    start_time: str | None = None
    last_failure_reason: str | None = None
    refusal: Refusal | None = None
    result: Result | None = None

    def to_annotation(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True)


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


def record_patch(record: Record) -> dict[str, Any]:
    """The merge patch that writes a record on the object."""
    return {"metadata": {"annotations": {RECORD_ANNOTATION: record.to_annotation()}}}
