"""The content of a child: what the operator sets on it, its hash, and whether an object found
under the child's name is that child.

Every child carries ``internvl.dev/content-hash``, a SHA-256 of its apiVersion, kind, metadata
(name, namespace, labels, owner references, annotations) and body (data, rules, subjects, spec),
leaving out what the operator itself changes later (the job's suspend field, wherever its
launcher keeps it, and the annotation recording it) and the hash itself; Kueue writes that field
too, when it admits or evicts the job. The API server, admission webhooks and controllers
add fields to what was created (uid, defaults, status); so an existing object is compared through
its projection onto the rendered object's shape (the same keys, the same list lengths): a copy
of the labels, owner reference and annotation with one value changed, or one list item added,
is not the child.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from internvl_operator.render.context import CONTENT_HASH_ANNOTATION, SUSPEND_ANNOTATION


def _canonical(value: Any) -> Any:
    """JSON with integral floats as integers: the API server returns 1.0 as 1."""
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def content_hash(child: dict[str, Any], suspend_path: tuple[str, ...]) -> str:
    """The hash of what the operator sets on a child (or on the projection of an existing object),
    without the field at ``suspend_path`` (the launcher's, ``internvl_operator.launchers``)."""
    content = copy.deepcopy(child)
    metadata = content.get("metadata") or {}
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(CONTENT_HASH_ANNOTATION, None)
        annotations.pop(SUSPEND_ANNOTATION, None)
        if not annotations:  # the same hash before and after the annotation is added
            del metadata["annotations"]
    *parents, suspend = suspend_path
    holder: Any = content
    for key in parents:
        holder = holder.get(key) if isinstance(holder, dict) else None
    if isinstance(holder, dict):
        holder.pop(suspend, None)
    text = json.dumps(_canonical(content), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def projected(existing: Any, rendered: Any) -> Any:
    """``existing`` cut to the shape of ``rendered``: the keys rendered has (missing ones None),
    lists of the same length item by item; anything else as it is, so a different shape differs."""
    if isinstance(rendered, dict) and isinstance(existing, dict):
        return {key: projected(existing.get(key), value) for key, value in rendered.items()}
    if isinstance(rendered, list) and isinstance(existing, list) and len(existing) == len(rendered):
        return [projected(item, value) for item, value in zip(existing, rendered, strict=True)]
    return existing


def _controller_uids(obj: dict[str, Any]) -> list[Any]:
    references = (obj.get("metadata") or {}).get("ownerReferences")
    if not isinstance(references, list):
        return []
    return [ref.get("uid") for ref in references if isinstance(ref, dict) and ref.get("controller")]


def difference(rendered: dict[str, Any], existing: dict[str, Any] | None, suspend_path: tuple[str, ...]) -> str | None:
    """Why the object found under a rendered child's name is not that child (a sentence for the
    JobCreated condition); None when it is, and the operator may adopt it. ``suspend_path`` is
    the launcher's suspend field, which may differ."""
    what = f"{rendered['kind']} {rendered['metadata']['name']}"
    if not isinstance(existing, dict):
        return f"{what} exists but could not be read"
    if _controller_uids(existing) != _controller_uids(rendered):
        return f"{what} exists and is not owned by this InternVLFinetune"
    if content_hash(projected(existing, rendered), suspend_path) != content_hash(rendered, suspend_path):
        return (
            f"{what} exists with this InternVLFinetune as owner but was not created by the operator for it: "
            "its labels, annotations or content differ from what the operator renders"
        )
    return None
