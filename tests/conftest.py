"""Shared test setup: integration tests need root and iproute2; they build their own namespaces."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0 and shutil.which("ip"):
        return
    skip = pytest.mark.skip(reason="network-namespace tests need root and iproute2")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def no_leftovers() -> object:
    """Fails the test if it leaves a network namespace behind that was not there before."""
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    yield
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    leaked = {n for n in after - before if not n.startswith("(")}
    assert not leaked, f"namespaces left behind: {leaked}"
