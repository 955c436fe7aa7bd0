"""A MemberSink's changes(), recorded: shared by the keeper's tests against etcd and _Burst's unit tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class ChangeRecorder:
    """changes() as the service's engine.paused() nests it, counted: depth open now (and the most ever open at
    once), opened and closed so far."""

    def __init__(self) -> None:
        self.depth = 0
        self.max_depth = 0
        self.opened = 0
        self.closed = 0

    @contextlib.contextmanager
    def changes(self) -> Iterator[None]:
        self.depth += 1
        self.max_depth = max(self.max_depth, self.depth)
        self.opened += 1
        try:
            yield
        finally:
            self.depth -= 1
            self.closed += 1
