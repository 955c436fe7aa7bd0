"""The etcd v3 implementation of :class:`control.membership.store.Store`, on aetcd (gRPC, asyncio).

The only module that imports aetcd. One aetcd Client talks to one host:port, so the endpoints are
rotated here: a call that finds its endpoint unreachable (connection refused, reset, timed out,
"no leader") drops that client, moves on to the next endpoint and tries it, once per endpoint; when
none answers it raises :class:`Unavailable`. The next call starts from the endpoint after the last
one that failed. A new Client (a new gRPC channel) is made for every try after a failure: gRPC's own
reconnection backs off up to two minutes, far longer than the keeper's own backoff.

Every call is bounded by asyncio.wait_for (``timeout`` + a margin over aetcd's own gRPC deadline),
so that no call of the keeper can hang, whatever the network does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

# Before gRPC is imported: no fork handlers. Our children (ip, ovs-vsctl, a takeover's daemon) exec at
# once; gRPC's handlers only print "Other threads are currently calling into gRPC, skipping fork()
# handlers" on stderr when a fork meets a call in flight.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import aetcd

from control.membership.store import Compacted, Event, Kv, LeaseGone, StoreError, Unavailable, cancel_requested

# A child forked after gRPC ran in this process (a test's isolated child) must never finalize the
# gRPC objects it inherited as garbage: their finalizers wait for gRPC's threads, which a forked child does
# not have, and spin for ever (10 CI tests hung so). Frozen, what the child inherited is never collected
# there (the use gc.freeze is documented for); what the child allocates itself is collected as usual.
os.register_at_fork(after_in_child=gc.freeze)

T = TypeVar("T")

_UNREACHABLE = (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError, aetcd.WatchTimeoutError)
_CLOSE_TIMEOUT = 1.0


async def _keepalive_once(c: aetcd.Client, lease: int) -> Any:
    """One LeaseKeepAlive round trip, our side of the stream kept open until the answer is in.

    (aetcd's refresh_lease sends its one request and half-closes the stream at once: etcd itself
    answers anyway, but etcd's grpc-proxy -- the README's way to an etcd with TLS -- then cancels the
    keepalive before it answers, "context canceled".) aetcd's errors as its own calls raise them.
    """
    await c.connect()
    answered = asyncio.Event()

    async def requests() -> AsyncGenerator[Any, None]:
        yield aetcd.rpc.LeaseKeepAliveRequest(ID=lease)
        await answered.wait()

    call = c.leasestub.LeaseKeepAlive(requests(), timeout=c._timeout, metadata=c.metadata)
    try:
        async for reply in call:
            return reply
    except aetcd.rpc.AioRpcError as exc:
        aetcd.exceptions._handle_exception(exc)
    finally:
        answered.set()
        call.cancel()
    return None


def parse_url(url: str) -> tuple[str, int]:
    """'http://host:port' -> (host, port); ValueError with a clear message otherwise.

    https is refused: the client speaks plain gRPC only (reach a TLS etcd through etcd's grpc-proxy
    on 127.0.0.1, see the README's TLS section). The port is required (etcd's is 2379).
    """
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme == "https":
        raise ValueError(
            f"etcd endpoint {url}: https is not supported; run etcd's grpc-proxy on 127.0.0.1 (README: etcd with TLS)"
        )
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"etcd endpoint {url!r}: expected http://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"etcd endpoint {url!r}: bad port") from None
    if port is None:
        raise ValueError(f"etcd endpoint {url!r}: the port is missing (etcd's is 2379)")
    return parts.hostname, port


def _target(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _kv(kv: Any) -> Kv:
    return Kv(
        key=bytes(kv.key).decode("utf-8", "replace"),
        value=bytes(kv.value),
        lease=int(kv.lease),
        create_revision=int(kv.create_revision),
        mod_revision=int(kv.mod_revision),
    )


def _lease_not_found(exc: Exception) -> bool:
    return "lease not found" in str(exc)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | aetcd.WatchTimeoutError):
        return "timed out"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class EtcdStore:
    """A Store on one or more etcd endpoints (see the module's docstring)."""

    def __init__(self, urls: Sequence[str], timeout: float = 2.0) -> None:
        """urls: http://host:port each (ValueError otherwise); timeout: seconds per request and endpoint."""
        if not urls:
            raise ValueError("no etcd endpoint")
        self._urls = tuple(u.strip() for u in urls)
        self._addrs = [parse_url(u) for u in self._urls]
        self._timeout = float(timeout)
        self._index = 0
        self._client: aetcd.Client | None = None
        self._used: str | None = None

    @property
    def endpoint(self) -> str | None:
        """The endpoint of the last call that got an answer, None before any."""
        return self._used

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint URL, in rotation order."""
        return self._urls

    def _current(self) -> aetcd.Client:
        if self._client is None:
            host, port = self._addrs[self._index]
            self._client = aetcd.Client(host=_target(host), port=port, timeout=self._timeout)
        return self._client

    async def _drop(self, client: aetcd.Client) -> None:
        """client failed: if it is still the current one, close it and move on to the next endpoint."""
        if self._client is client:
            self._client = None
            self._index = (self._index + 1) % len(self._urls)
        await _close(client)

    async def _call(self, op: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """op on the current endpoint, then on each other one while they are unreachable."""
        failures: list[str] = []
        for _ in range(len(self._urls)):
            client = self._current()
            url = self._urls[self._index]
            try:
                result = await asyncio.wait_for(op(client), self._timeout + 0.5)
            except (TimeoutError, *_UNREACHABLE) as exc:
                failures.append(f"{url}: {_why(exc)}")
                await self._drop(client)
                continue
            except aetcd.ClientError as exc:
                if _lease_not_found(exc):
                    raise LeaseGone(f"{url}: {_why(exc)}") from None
                raise StoreError(f"{url}: {_why(exc)}") from None
            except (OSError, RuntimeError) as exc:  # gRPC channel trouble below aetcd's error mapping
                failures.append(f"{url}: {type(exc).__name__}: {_why(exc)}")
                await self._drop(client)
                continue
            except asyncio.CancelledError:
                if cancel_requested():
                    raise
                failures.append(f"{url}: the call was cancelled under us (its channel closed)")
                await self._drop(client)
                continue
            self._used = url
            return result
        raise Unavailable("; ".join(failures))

    async def grant(self, ttl: int) -> int:
        """A new lease of ttl seconds; its id."""

        async def op(c: aetcd.Client) -> int:
            lease = await c.lease(int(ttl))
            return int(lease.id)

        return await self._call(op)

    async def keepalive(self, lease: int) -> int:
        """Refresh the lease; its remaining TTL (LeaseGone when etcd answers TTL <= 0: it does not exist)."""

        async def op(c: aetcd.Client) -> Any:
            return await _keepalive_once(c, lease)

        reply = await self._call(op)
        if reply is None:
            raise Unavailable(f"{self._used}: no answer to the lease keepalive")
        ttl = int(reply.TTL)
        if ttl <= 0:
            raise LeaseGone(f"lease {lease:x} not found (expired or revoked)")
        return ttl

    async def revoke(self, lease: int) -> None:
        """Revoke the lease (its keys are deleted); LeaseGone if it does not exist."""

        async def op(c: aetcd.Client) -> None:
            await c.revoke_lease(lease)

        await self._call(op)

    async def create(self, key: str, value: bytes, lease: int = 0) -> tuple[bool, Kv | None]:
        """key = value on lease if absent (one transaction); (False, current) when it exists."""
        k = key.encode()

        async def op(c: aetcd.Client) -> tuple[bool, Any]:
            t = c.transactions
            result: tuple[bool, Any] = await c.transaction(
                compare=[t.version(k) == 0],
                success=[t.put(k, value, lease=lease or None)],
                failure=[t.get(k)],
            )
            return result

        ok, responses = await self._call(op)
        return (True, None) if ok else (False, _first(responses))

    async def replace(self, key: str, value: bytes, lease: int, expect_mod_rev: int) -> tuple[bool, Kv | None]:
        """key = value on lease if its mod revision is still expect_mod_rev (one transaction)."""
        k = key.encode()

        async def op(c: aetcd.Client) -> tuple[bool, Any]:
            t = c.transactions
            result: tuple[bool, Any] = await c.transaction(
                compare=[t.mod(k) == expect_mod_rev],
                success=[t.put(k, value, lease=lease or None)],
                failure=[t.get(k)],
            )
            return result

        ok, responses = await self._call(op)
        return (True, None) if ok else (False, _first(responses))

    async def get(self, key: str) -> Kv | None:
        """The key, None if absent."""

        async def op(c: aetcd.Client) -> Any:
            return await c.get(key.encode())

        got = await self._call(op)
        return None if got is None else _kv(got)

    async def list(self, prefix: str) -> tuple[int, list[Kv]]:
        """The revision and every key under prefix at that revision."""

        async def op(c: aetcd.Client) -> Any:
            return await c.get_prefix(prefix.encode())

        got = await self._call(op)
        return int(got.header.revision), [_kv(kv) for kv in got.kvs]

    async def compact(self, revision: int) -> None:
        """Compact the history up to revision (tests and tools; the keeper never compacts)."""

        async def op(c: aetcd.Client) -> None:
            await c.compact(revision)

        await self._call(op)

    async def put(self, key: str, value: bytes, lease: int = 0) -> None:
        """An unconditional put (tests and tools; the keeper only writes through create/replace)."""

        async def op(c: aetcd.Client) -> None:
            await c.put(key.encode(), value, lease=lease or None)

        await self._call(op)

    async def delete(self, key: str) -> None:
        """Delete a key (tests and tools)."""

        async def op(c: aetcd.Client) -> None:
            await c.delete(key.encode())

        await self._call(op)

    async def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[Event, None]:
        """Events under prefix from start_revision (inclusive) on the current endpoint.

        Compacted when start_revision is older than the compaction; Unavailable when the watch cannot
        be created or its stream breaks (the endpoint is dropped: the next call tries the next one).
        """
        client = self._current()
        url = self._urls[self._index]
        try:
            await asyncio.wait_for(client.connect(), self._timeout + 0.5)
            w = await asyncio.wait_for(
                client.watch_prefix(prefix.encode(), start_revision=start_revision), self._timeout + 0.5
            )
        except aetcd.RevisionCompactedError as exc:
            raise Compacted(f"{url}: {_why(exc)}", int(exc.compacted_revision)) from None
        except (TimeoutError, OSError, RuntimeError, *_UNREACHABLE) as exc:
            await self._drop(client)
            raise Unavailable(f"{url}: watch: {_why(exc)}") from None
        except aetcd.ClientError as exc:
            raise StoreError(f"{url}: watch: {_why(exc)}") from None
        except asyncio.CancelledError:
            if cancel_requested():
                raise
            await self._drop(client)
            raise Unavailable(f"{url}: watch: cancelled under us (its channel closed)") from None
        self._used = url
        try:
            try:
                async for ev in w:
                    kv = _kv(ev.kv)
                    if ev.kind == aetcd.EventKind.PUT:
                        yield Event("put", kv, kv.mod_revision)
                    else:
                        yield Event("delete", kv, kv.mod_revision)
            except aetcd.RevisionCompactedError as exc:
                raise Compacted(f"{url}: {_why(exc)}", int(exc.compacted_revision)) from None
            except (OSError, RuntimeError, *_UNREACHABLE) as exc:
                await self._drop(client)
                raise Unavailable(f"{url}: watch: {_why(exc)}") from None
            except aetcd.ClientError as exc:
                await self._drop(client)
                raise Unavailable(f"{url}: watch: {_why(exc)}") from None
            except asyncio.CancelledError:
                if cancel_requested():
                    raise
                await self._drop(client)
                raise Unavailable(f"{url}: watch: cancelled under us (its channel closed)") from None
            await self._drop(client)  # the stream ended without an error: the client shut down
            raise Unavailable(f"{url}: watch: the stream ended")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.cancel(), _CLOSE_TIMEOUT)

    async def close(self) -> None:
        """Close the current client (bounded; never raises)."""
        client, self._client = self._client, None
        if client is not None:
            await _close(client)


def _first(responses: list[Any]) -> Kv | None:
    """The key read by a transaction's failure branch (a Get), None if it is absent."""
    for r in responses:
        if isinstance(r, list) and r:
            _value, got = r[0]
            return _kv(got)
    return None


async def _close(client: aetcd.Client) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), _CLOSE_TIMEOUT)


def connect(urls: Sequence[str] | str, timeout: float = 2.0) -> EtcdStore:
    """A Store on the endpoints (a sequence, or 'URL,URL'); no I/O here: the first call connects.

    ValueError for a malformed URL (or https).
    """
    if isinstance(urls, str):
        urls = [u for u in urls.split(",") if u.strip()]
    return EtcdStore(urls, timeout)
