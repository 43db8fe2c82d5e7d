"""The freshest status the operator knows of each model: kopf's copy, or the answer to its
own last status write, whichever is newer.

Each evaluation builds the policy's part of the status and sends it only when the status
does not say it already (``status.status_holds``). It compared with kopf's copy of the
model, which the watch updates; when the event loop falls behind, that copy still lacks the
operator's own last write, so an evaluation that decided exactly what it decided a round
before rewrote it (23 PATCH/s with nothing changing at 1,000 models), and every such write
came back as one more watch event to process: the lag fed itself.

A server-side apply answers with the whole object as written, so the operator knows what it
wrote, at which ``resourceVersion``, before the watch tells it. ``StatusMemory`` keeps that
answer per model until kopf's copy catches up (a version at least as new: then the copy is
used and the answer dropped, so only models whose copy lags take memory); evaluations read
the newer of the two (``fresher_status``, pure).

``resourceVersion`` is compared as a number. The API conventions call it opaque; every API
server backed by etcd gives the object's etcd revision, which grows with every write. A
version that is not a number (another storage) makes the memory step aside: kopf's copy is
used, as before. The ``uid`` must match (a model deleted and created again under the same
name starts afresh).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StatusMemory", "Written", "fresher_status", "version_number"]


def version_number(raw: object) -> int | None:
    """A ``resourceVersion`` as the number it is on etcd, or ``None``."""
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    return None


@dataclass(frozen=True)
class Written:
    """What the operator's last status write answered: the model's uid, the version the
    write produced, and the whole status as the server holds it after it."""

    uid: str
    version: int
    status: Mapping[str, Any]


def fresher_status(
    body: Mapping[str, Any], written: Written | None
) -> tuple[Mapping[str, Any], bool]:
    """The newer of ``body``'s status and ``written``'s, and whether ``written`` is still
    worth keeping (its version is newer than the body's) (pure)."""
    meta = body.get("metadata") or {}
    status: Mapping[str, Any] = body.get("status") or {}
    if written is None or written.uid != str(meta.get("uid") or ""):
        return status, False
    seen = version_number(meta.get("resourceVersion"))
    if seen is None or seen >= written.version:
        return status, False
    return written.status, True


@dataclass
class StatusMemory:
    """Per model (namespace, name): the answer to the operator's last status write, kept
    while kopf's copy is older."""

    _written: dict[tuple[str, str], Written] = field(default_factory=dict)

    def wrote(self, answer: Mapping[str, Any]) -> None:
        """Remember a status apply's answer (the whole object); one without a numeric
        version or a uid (a fake, another storage) is not kept."""
        meta = answer.get("metadata") or {}
        version = version_number(meta.get("resourceVersion"))
        uid = str(meta.get("uid") or "")
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if version is None or not uid:
            self._written.pop(key, None)
            return
        kept = self._written.get(key)
        if kept is None or kept.uid != uid or kept.version < version:
            self._written[key] = Written(uid, version, dict(answer.get("status") or {}))

    def status_of(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """The freshest status of ``body``'s model (see ``fresher_status``)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        written = self._written.get(key)
        status, keep = fresher_status(body, written)
        if written is not None and not keep:
            del self._written[key]
        return status

    def forget(self, namespace: str, name: str) -> None:
        """The model is gone."""
        self._written.pop((namespace, name), None)

    def __len__(self) -> int:
        return len(self._written)
