"""The TAP's root qdisc: ``noqueue`` instead of the kernel's default (pfifo_fast or fq_codel).

Whatever sends into the TAP — a Linux bridge forwarding to its port, Open vSwitch
writing to it through a packet socket — passes the TAP's qdisc: a lock, an enqueue
and a dequeue per frame. The tun driver never stops its queue (a full ring drops the
frame and counts it in the TAP's tx_dropped), so the qdisc never holds a frame back:
it is pure cost, as on a veth, whose default is noqueue. Measured on the OVS br-int
scenario, it is a fifth to a third of ovl-dp's throughput there (README).

One RTM_NEWQDISC on a NETLINK_ROUTE socket, synchronous (the engine replaces a
deleted TAP from its event loop, where pyroute2's own loop cannot run). The qdisc
belongs to our TAP and vanishes with it; nothing else on the host changes.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

RTM_NEWQDISC = 36
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
TCA_KIND = 1
TC_H_ROOT = 0xFFFFFFFF
QDISCS = ("noqueue", "keep")  # tap.qdisc: what ovl-dp sets on its TAP (keep: the kernel's default)


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def set_root_qdisc(ifindex: int, kind: str = "noqueue") -> str:
    """Replace the root qdisc of interface ifindex with a parameterless qdisc kind; '' on success, else why not.

    Never raises for what the kernel says (an old kernel may refuse noqueue as a root
    qdisc): the caller keeps the default qdisc and logs the reason.
    """
    body = struct.pack("=BBHiIII", socket.AF_UNSPEC, 0, 0, ifindex, 0, TC_H_ROOT, 0)
    body += _attr(TCA_KIND, kind.encode() + b"\0")
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    msg = struct.pack("=IHHII", 16 + len(body), RTM_NEWQDISC, flags, 1, 0) + body
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as nl:
            nl.settimeout(2.0)
            nl.bind((0, 0))
            nl.send(msg)
            while True:
                data = nl.recv(65536)
                off = 0
                while off + 16 <= len(data):
                    length, mtype, _, seq, _ = struct.unpack_from("=IHHII", data, off)
                    if length < 16:
                        return "malformed netlink answer"
                    if mtype == NLMSG_ERROR and seq == 1:
                        if length < 20 or off + 20 > len(data):
                            return "truncated netlink error"
                        (err,) = struct.unpack_from("=i", data, off + 16)
                        return "" if err == 0 else f"{os.strerror(-err)} ({errno.errorcode.get(-err, -err)})"
                    off += (length + 3) & ~3
    except OSError as exc:
        return str(exc)
