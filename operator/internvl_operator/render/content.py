"""The content of a child: what the operator sets on it, its hash, and whether an object found
under the child's name is that child.

Every child carries ``internvl.dev/content-hash``, a SHA-256 of its apiVersion, kind, metadata
(name, namespace, labels, owner references, annotations) and body (data, rules, subjects, spec),
leaving out what the operator itself changes later (the job's suspend field, wherever its
launcher keeps it, and the annotation recording it) and the hash itself; Kueue writes that field
too, when it admits or evicts the job. The API server, admission webhooks and controllers
add fields to what was created (uid, defaults, status); so an existing object is compared through
its projection onto the rendered object's shape: the same keys; in a list its schema declares a
map list (x-kubernetes-list-type: map), the items with the keys of the rendered ones, as
server-side apply matches them, so the items other managers add are not the operator's content
(Kueue adds its own entry to a TrainJob's runtimePatches when it admits it); in any other list,
the same items in the same number. So the child as found, projected, hashes to the hash the
operator wrote on it, whoever added to it; a copy of the labels, owner reference and annotation
with one value changed, an item of the operator's changed or missing, or one item added to a
list that is not a map list, does not.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from internvl_operator.render.context import CONTENT_HASH_ANNOTATION, SUSPEND_ANNOTATION
from internvl_operator.render.trainjob import API_VERSION as TRAINJOB_API_VERSION
from internvl_operator.render.trainjob import KIND as TRAINJOB_KIND
from internvl_operator.render.trainjob import LIST_MAP_KEYS as TRAINJOB_LIST_MAP_KEYS

# The keys of the map lists of each kind of child (by apiVersion and kind) that has any among the
# lists the operator renders: a path with "*" for each item of a list, and the list's keys.
LIST_MAP_KEYS: dict[tuple[str, str], dict[tuple[str, ...], tuple[str, ...]]] = {
    (TRAINJOB_API_VERSION, TRAINJOB_KIND): TRAINJOB_LIST_MAP_KEYS,
}


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


def _map_key(item: Any, keys: tuple[str, ...]) -> tuple[Any, ...] | None:
    return tuple(item.get(key) for key in keys) if isinstance(item, dict) else None


def projected(
    existing: Any,
    rendered: Any,
    list_map_keys: dict[tuple[str, ...], tuple[str, ...]],
    path: tuple[str, ...] = (),
) -> Any:
    """``existing`` cut to the shape of ``rendered``: the keys rendered has (missing ones None);
    in a map list (``list_map_keys``: the keys of the lists at those paths, "*" for each item),
    for each rendered item the existing one with its keys (or None); other lists of the same
    length item by item; anything else as it is, so a different shape differs."""
    if isinstance(rendered, dict) and isinstance(existing, dict):
        return {
            key: projected(existing.get(key), value, list_map_keys, (*path, key)) for key, value in rendered.items()
        }
    if isinstance(rendered, list) and isinstance(existing, list):
        keys = list_map_keys.get(path)
        if keys is not None:
            by_key = {_map_key(item, keys): item for item in existing}
            pairs = [(by_key.get(_map_key(item, keys)), item) for item in rendered]
        elif len(existing) == len(rendered):
            pairs = list(zip(existing, rendered, strict=True))
        else:
            return existing
        return [projected(old, new, list_map_keys, (*path, "*")) for old, new in pairs]
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
    list_map_keys = LIST_MAP_KEYS.get((rendered["apiVersion"], rendered["kind"]), {})
    mine = projected(existing, rendered, list_map_keys)
    if content_hash(mine, suspend_path) != content_hash(rendered, suspend_path):
        return (
            f"{what} exists with this InternVLFinetune as owner but was not created by the operator for it: "
            "its labels, annotations or content differ from what the operator renders"
        )
    return None
