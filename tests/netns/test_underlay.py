"""datapath/io/underlay.py against a routing table of the test's own: route_to."""

from __future__ import annotations

import re

import pytest

from datapath.errors import SetupError
from datapath.io import underlay
from tests.isolated import run_isolated
from tests.netns.netutil import ip, veth

pytestmark = pytest.mark.netns


def test_route_to_gives_the_source_address_and_path_mtu() -> None:
    def body() -> None:
        veth("10.1.0.1/24")
        ip("link", "set", "u0", "mtu", "1600")
        ip("route", "add", "10.2.0.0/24", "dev", "u0", "mtu", "1400")
        ip("addr", "add", "10.3.0.1/24", "dev", "u0")
        ip("route", "add", "10.4.0.0/24", "via", "10.3.0.9", "src", "10.3.0.1", "mtu", "1380")
        assert underlay.route_to("10.1.0.9") == ("10.1.0.1", 1600)  # on-link: the device MTU
        assert underlay.route_to("10.2.0.5") == ("10.1.0.1", 1400)  # the route's MTU
        assert underlay.route_to("10.4.0.7") == ("10.3.0.1", 1380)  # the route's source address

    run_isolated(body)


def test_route_to_without_a_route() -> None:
    def body() -> None:
        veth("10.1.0.1/24")
        with pytest.raises(SetupError) as info:
            underlay.route_to("10.9.9.9")
        assert str(info.value) == "no route to remote 10.9.9.9: Network is unreachable"

    run_isolated(body)


def test_route_to_an_unreachable_route() -> None:
    def body() -> None:
        veth("10.1.0.1/24")
        ip("route", "add", "unreachable", "10.8.0.0/16")
        with pytest.raises(SetupError, match=re.escape("no route to remote 10.8.1.1: ")):
            underlay.route_to("10.8.1.1")

    run_isolated(body)
