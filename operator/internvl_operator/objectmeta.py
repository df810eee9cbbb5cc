"""metav1.ObjectMeta: the metadata of an InternVLFinetune, field for field.

The API server refuses an unknown metadata field (kubectl's strict field validation) and
validates the rest (ValidateObjectMeta): the name a DNS subdomain, the namespace a DNS label,
labels with qualified-name keys and label values, annotations with qualified-name keys and at
most 256 KiB in all, finalizers qualified names. The fields the server sets (uid,
resourceVersion, timestamps, managedFields) are read back as they are.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from internvl_operator.kubeformats import (
    DNS_SUBDOMAIN_MAX,
    DNS_SUBDOMAIN_RE,
    Annotations,
    Label,
    Labels,
    QualifiedName,
    Subdomain,
    Timestamp,
)
from internvl_trainer.config import OptionalInt, Section

GenerateName = Annotated[
    str,
    StringConstraints(
        max_length=DNS_SUBDOMAIN_MAX,
        pattern=rf"^{DNS_SUBDOMAIN_RE}-?$",
    ),
]
"""A name prefix the server completes: a DNS subdomain, optionally ending in '-'."""


class OwnerReference(Section):
    """An object this one belongs to."""

    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ManagedFieldsEntry(Section):
    """Which manager set which fields (server-side apply)."""

    manager: str | None = None
    operation: Literal["Apply", "Update"] | None = None
    api_version: str | None = None
    time: Timestamp | None = None
    fields_type: Literal["FieldsV1"] | None = None
    fields_v1: dict[str, Any] | None = Field(None, alias="fieldsV1")
    subresource: str | None = None


class ObjectMeta(Section):
    """Standard object metadata (metav1.ObjectMeta)."""

    name: Subdomain
    """Object name."""

    generate_name: GenerateName | None = None
    """Prefix of a name the server generates."""

    namespace: Label | None = None
    """Object namespace."""

    self_link: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: OptionalInt = Field(None, ge=0)
    creation_timestamp: Timestamp | None = None
    deletion_timestamp: Timestamp | None = None
    deletion_grace_period_seconds: OptionalInt = Field(None, ge=0)

    labels: Labels | None = None
    """Labels: qualified-name keys, label values."""

    annotations: Annotations | None = None
    """Annotations: qualified-name keys, at most 256 KiB in all."""

    owner_references: list[OwnerReference] | None = None
    finalizers: list[QualifiedName] | None = None
    managed_fields: list[ManagedFieldsEntry] | None = None
