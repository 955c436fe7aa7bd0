"""Our small interface to the store (etcd v3 semantics), so that the client library can be replaced.

The keeper (keeper.py) only uses :class:`Store`; etcd.py implements it with aetcd. Every method is
bounded in time by the implementation and raises only :class:`StoreError` subclasses:

- :class:`Unavailable`: no endpoint answered (down, unreachable, timed out). The implementation
  moves on to its next endpoint before raising, so the next call tries another one.
- :class:`LeaseGone`: the lease does not exist any more (expired, revoked from outside).
- :class:`Compacted`: a watch asked for a revision the store compacted away; list again.
- :class:`StoreError`: anything else the store refused (a bug or an operator's setting, e.g. auth).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal, Protocol


def cancel_requested() -> bool:
    """The current task was asked to stop (Task.cancel). False for a CancelledError that comes from
    below: gRPC raises one in a call whose channel was closed under it (by another task), and that
    must be an Unavailable, not the silent end of the caller's task."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class StoreError(Exception):
    """The store refused or failed a request; the message says why in one line."""


class Unavailable(StoreError):
    """No endpoint answered in time."""


class Compacted(StoreError):
    """The revision a watch starts from was compacted; revision: the store's compacted revision."""

    def __init__(self, message: str, revision: int = 0) -> None:
        super().__init__(message)
        self.revision = revision


class LeaseGone(StoreError):
    """The lease expired or was revoked (keepalive TTL <= 0, or 'lease not found')."""


@dataclass(frozen=True)
class Kv:
    """One key: its value, the lease it is on (0: none) and its create and last modification revisions."""

    key: str
    value: bytes
    lease: int = 0
    create_revision: int = 0
    mod_revision: int = 0


@dataclass(frozen=True)
class Event:
    """A watch event: kind "put" or "delete", the key (for delete, value b""), the revision it happened at."""

    kind: Literal["put", "delete"]
    kv: Kv
    revision: int


class Store(Protocol):
    """What the keeper needs of etcd. Keys are str, values bytes."""

    @property
    def endpoint(self) -> str | None:
        """The endpoint URL in use (the one the last call went to), None before any call."""
        ...

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint URL, in rotation order."""
        ...

    async def grant(self, ttl: int) -> int:
        """A new lease of ttl seconds; its id."""
        ...

    async def keepalive(self, lease: int) -> int:
        """Refresh the lease; its remaining TTL. LeaseGone if it does not exist any more."""
        ...

    async def revoke(self, lease: int) -> None:
        """Revoke the lease (its keys are deleted). LeaseGone if it does not exist."""
        ...

    async def create(self, key: str, value: bytes, lease: int = 0) -> tuple[bool, Kv | None]:
        """Put key = value (on lease, 0: none) if key is absent, in one transaction.

        (True, None) when created; (False, current) when the key exists: the caller checks the
        owner and calls :meth:`replace` with current.mod_revision. LeaseGone if lease does not exist.
        """
        ...

    async def replace(self, key: str, value: bytes, lease: int, expect_mod_rev: int) -> tuple[bool, Kv | None]:
        """Put key = value on lease only if the key's mod revision is still expect_mod_rev (one transaction).

        (True, None) when replaced; (False, current or None when the key is gone) when it changed.
        """
        ...

    async def get(self, key: str) -> Kv | None:
        """The key, None if absent."""
        ...

    async def list(self, prefix: str) -> tuple[int, list[Kv]]:
        """The store's revision R and every key under prefix at R."""
        ...

    def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[Event, None]:
        """Events under prefix from start_revision on (inclusive), in order, until cancelled or closed
        (aclose(): the watch is cancelled on the server).

        Raises Compacted when start_revision was compacted, Unavailable when the stream breaks.
        """
        ...

    async def close(self) -> None:
        """Let go of the connection (bounded; never raises)."""
        ...
