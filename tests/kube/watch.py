"""Watch streams: what one watcher receives, with the cacher's selector semantics.

An object that stops matching a watcher's selectors is sent to it as DELETED (the previous object
at the new resourceVersion), one that starts matching as ADDED, as the real watch cache does.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

from .resources import Resource
from .selectors import FieldRequirement, Requirement, fields_match, labels_match


@dataclass(frozen=True)
class Event:
    """One change in the store: the object after it and (for MODIFIED/DELETED) before it."""

    rv: int
    type: str
    key: str
    namespace: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


def with_rv(obj: dict[str, Any], rv: int) -> dict[str, Any]:
    """A shallow copy of the object at another resourceVersion."""
    return {**obj, "metadata": {**obj.get("metadata", {}), "resourceVersion": str(rv)}}


class Watcher:
    """One open watch: its filter and the queue its HTTP stream drains."""

    END = object()

    def __init__(
        self,
        resource: Resource,
        namespace: str | None,
        labels: list[Requirement],
        fields: list[FieldRequirement],
    ) -> None:
        self.resource = resource
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.queue: queue.Queue[Any] = queue.Queue()
        self.closed = threading.Event()

    def matches(self, obj: dict[str, Any] | None) -> bool:
        """Whether the object passes this watcher's selectors."""
        return obj is not None and labels_match(self.labels, obj) and fields_match(self.fields, obj)

    def wants(self, event: Event) -> bool:
        """Same resource and namespace (selectors are applied by `convert`)."""
        return event.key == self.resource.key and (
            self.namespace is None or event.namespace == self.namespace
        )

    def convert(self, event: Event) -> tuple[str, dict[str, Any]] | None:
        """The (type, object) this watcher sees for a store event, or None."""
        now = event.type != "DELETED" and self.matches(event.obj)
        if event.type == "DELETED":
            return ("DELETED", event.obj) if self.matches(event.obj) else None
        before = event.old is not None and self.matches(event.old)
        if now and before:
            return ("MODIFIED", event.obj)
        if now:
            return ("ADDED", event.obj)
        if before and event.old is not None:
            return ("DELETED", with_rv(event.old, event.rv))
        return None

    def push(self, item: Any) -> None:
        """Queue a (type, object) pair, or END."""
        self.queue.put(item)

    def close(self) -> None:
        """End the stream after what is already queued."""
        self.closed.set()
        self.queue.put(self.END)
