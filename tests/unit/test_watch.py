"""control/watch.py's pure parts: rtnetlink messages (encoded by pyroute2, as the kernel sends them) -> events."""

from __future__ import annotations

import socket
from typing import Any

from pyroute2.netlink.rtnl import RTM_DELADDR, RTM_DELLINK, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from control.watch import (
    RESYNC,
    AddrEvent,
    LinkEvent,
    NeighEvent,
    Resync,
    RouteEvent,
    Watcher,
    decode,
    route_covers,
)


def _wire(msg: Any, kind: int, **fields: Any) -> bytes:
    msg["header"]["type"] = kind
    msg["header"]["flags"] = 0
    for key, value in fields.items():
        msg[key] = value
    msg.encode()
    return bytes(msg.data[: msg["header"]["length"]])


def link(kind: int, family: int = socket.AF_UNSPEC, **attrs: Any) -> bytes:
    m = ifinfmsg()
    m["attrs"] = list(attrs.items())
    return _wire(m, kind, index=7, family=family, flags=1)


def test_link_new_with_master_mtu_and_kind() -> None:
    data = link(RTM_NEWLINK, IFLA_IFNAME="ovl-gre", IFLA_MTU=1462, IFLA_MASTER=3,
                IFLA_LINKINFO={"attrs": [("IFLA_INFO_KIND", "tun")]})  # fmt: skip
    assert decode(data) == [LinkEvent("new", 7, "ovl-gre", master=3, mtu=1462, kind="tun", up=True)]


def test_link_del_without_master_or_kind() -> None:
    assert decode(link(RTM_DELLINK, IFLA_IFNAME="br-int")) == [LinkEvent("del", 7, "br-int", up=True)]


def test_bridge_port_news_are_not_link_events() -> None:
    # The kernel announces a port leaving its bridge as RTM_DELLINK of family AF_BRIDGE: not the link deleted.
    assert decode(link(RTM_DELLINK, family=socket.AF_BRIDGE, IFLA_IFNAME="ovl-gre", IFLA_MASTER=3)) == []


def test_several_messages_in_one_datagram() -> None:
    data = link(RTM_NEWLINK, IFLA_IFNAME="a") + link(RTM_DELLINK, IFLA_IFNAME="b")
    assert [(e.op, e.name) for e in decode(data) if isinstance(e, LinkEvent)] == [("new", "a"), ("del", "b")]


def test_ipv4_address_removed() -> None:
    m = ifaddrmsg()
    m["attrs"] = [("IFA_ADDRESS", "192.0.2.1"), ("IFA_LOCAL", "192.0.2.1")]
    data = _wire(m, RTM_DELADDR, family=socket.AF_INET, index=2, prefixlen=24)
    assert decode(data) == [AddrEvent("del", 2, "192.0.2.1", 24)]


def test_ipv6_addresses_and_routes_are_events() -> None:
    """(issue 11, v6: the daemon subscribes to them, GROUPS6, when it has IPv6 remotes.)"""
    m = ifaddrmsg()
    m["attrs"] = [("IFA_ADDRESS", "2001:db8::1")]
    assert decode(_wire(m, RTM_DELADDR, family=socket.AF_INET6, index=2, prefixlen=64)) == [
        AddrEvent("del", 2, "2001:db8::1", 64)
    ]
    r = rtmsg()
    r["attrs"] = [("RTA_DST", "2001:db8:5::"), ("RTA_OIF", 4), ("RTA_TABLE", 254)]
    data = _wire(r, RTM_NEWROUTE, family=socket.AF_INET6, dst_len=48, table=254, type=1)
    assert decode(data) == [RouteEvent("new", "2001:db8:5::", 48, oif=4, table=254)]


def route(table: int = 254, **attrs: Any) -> bytes:
    m = rtmsg()
    m["attrs"] = list(attrs.items())
    return _wire(m, RTM_NEWROUTE, family=socket.AF_INET, dst_len=24, table=table, type=1)


def test_route_and_its_table() -> None:
    data = route(RTA_DST="198.51.100.0", RTA_OIF=4, RTA_GATEWAY="192.0.2.254", RTA_TABLE=254)
    assert decode(data) == [RouteEvent("new", "198.51.100.0", 24, oif=4, gateway="192.0.2.254", table=254)]
    # Routes of other tables (policy routing's, the kernel's own 'default' 253) are not ours to follow.
    assert decode(route(table=100, RTA_DST="198.51.100.0", RTA_TABLE=100)) == []


def test_neighbour_events() -> None:
    m = ndmsg()
    m["attrs"] = [("NDA_DST", "192.0.2.2"), ("NDA_LLADDR", "02:00:5e:10:20:30")]
    data = _wire(m, 28, family=socket.AF_INET, ifindex=3, state=0x04)  # RTM_NEWNEIGH, STALE
    assert decode(data) == [NeighEvent("new", 3, "192.0.2.2", "02:00:5e:10:20:30", 0x04)]
    m = ndmsg()
    m["attrs"] = [("NDA_DST", "192.0.2.2")]
    assert decode(_wire(m, 29, family=socket.AF_INET, ifindex=3, state=0x20)) == [  # RTM_DELNEIGH, FAILED
        NeighEvent("del", 3, "192.0.2.2", "", 0x20)
    ]
    m = ndmsg()
    m["attrs"] = [("NDA_DST", "fe80::1")]
    assert decode(_wire(m, 28, family=socket.AF_INET6, ifindex=3, state=2)) == []  # IPv6: not watched


def test_route_covers() -> None:
    assert route_covers(RouteEvent("new", "198.51.100.0", 24), "198.51.100.7")
    assert not route_covers(RouteEvent("new", "198.51.100.0", 24), "198.51.101.7")
    assert route_covers(RouteEvent("new", "", 0), "203.0.113.9")  # the default route
    assert route_covers(RouteEvent("del", "192.0.2.2", 32), "192.0.2.2")
    assert route_covers(RouteEvent("new", "2001:db8:5::", 48), "2001:db8:5:1::9")
    assert not route_covers(RouteEvent("new", "2001:db8:5::", 48), "2001:db8:6::9")
    assert not route_covers(RouteEvent("new", "2001:db8:5::", 48), "192.0.2.2")  # another family


def test_a_failing_handler_does_not_stop_the_others_or_the_watcher() -> None:
    seen: list[object] = []

    def broken(ev: object) -> None:
        raise RuntimeError("boom")

    w = Watcher()  # a NETLINK_ROUTE socket needs no privilege
    try:
        w.add(broken)
        w.add(seen.append)
        events = [LinkEvent("del", 9, "x"), RESYNC]
        w.dispatch(events)
        w.dispatch(events)
        assert seen == events * 2
        assert w.handler_errors == 4 and w.events == 4
        assert isinstance(seen[1], Resync)
    finally:
        w.close()
