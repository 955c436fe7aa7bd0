"""Shared test setup: integration tests need root and iproute2; they build their own namespaces."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from control.lab import etcd


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0 and shutil.which("ip"):
        return
    skip = pytest.mark.skip(reason="network-namespace tests need root and iproute2")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


def lab_namespaces(pid: int) -> list[str]:
    """Namespaces of the labs that process pid made (control.lab.hosts names them ovl<pid>-...)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"ovl{pid % 100000}-")]


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Fails the test if a lab it built leaves a network namespace or an etcd server behind."""
    yield
    leaked = lab_namespaces(os.getpid())
    assert not leaked, f"namespaces left behind: {leaked}"
    servers = etcd.leftovers()
    assert not servers, f"etcd servers left running: {servers}"
