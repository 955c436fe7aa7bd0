"""A daemon's etcd membership as the lab reads it, and a watcher that times one member's removal.

:func:`others` picks from a daemon's ``members`` report (the control socket's
"members" command, what ``ovl-dp members --json`` prints) the members other
than itself that are remotes of its datapath.

``python3 -m control.lab.members ADDR TIMEOUT`` runs inside a host namespace
(``ip netns exec``; the control socket is abstract, so it belongs to that
namespace) and asks the one daemon there, every POLL seconds, for its members
and remotes: it prints ``watching`` once ADDR is both, then ``gone T`` when it
is neither any more, T being time.monotonic() (the clock is the machine's, so
the lab compares it with the moment it killed ADDR's daemon). ``absent``,
``timeout`` or ``error MESSAGE`` otherwise, with exit code 1. Polling the
daemon from inside its namespace takes a few milliseconds; an ``ovl-dp members``
command per poll would take a Python start (~0.3 s) and blur the removal time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

POLL = 0.02  # seconds between two questions to the daemon


def others(report: Mapping[str, Any]) -> list[str]:
    """The addresses of the members a daemon lists other than itself that are its remotes, sorted."""
    members = report.get("members") or []
    return sorted(str(m["addr"]) for m in members if not m.get("self") and m.get("remote"))


def _known(tap: str, addr: str) -> bool:
    """addr is a member of the daemon behind tap or one of its remotes."""
    from control import ctl

    report = ctl.request(tap, "members", timeout=5)
    remotes = ctl.request(tap, "remote", {"op": "list"}, timeout=5)
    assert isinstance(report, dict) and isinstance(remotes, list)
    listed = {str(m["addr"]) for m in report.get("members") or [] if not m.get("self")}
    return addr in listed or addr in {str(r["remote"]) for r in remotes}


def watch_removal(addr: str, timeout: float) -> int:
    """The watcher's work (see the module docstring); its exit code."""
    from control import ctl

    try:
        taps = ctl.running()
        if len(taps) != 1:
            print(f"error {len(taps)} daemons run in this namespace, expected 1", flush=True)
            return 1
        if not _known(taps[0], addr):
            print("absent", flush=True)
            return 1
        print("watching", flush=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _known(taps[0], addr):
                print(f"gone {time.monotonic():.6f}", flush=True)
                return 0
            time.sleep(POLL)
    except (OSError, RuntimeError) as exc:
        print(f"error {exc}", flush=True)
        return 1
    print("timeout", flush=True)
    return 1


def main(argv: Sequence[str]) -> int:
    """`python3 -m control.lab.members ADDR TIMEOUT`."""
    if len(argv) != 2:
        print("usage: python3 -m control.lab.members ADDR TIMEOUT", file=sys.stderr)
        return 2
    return watch_removal(argv[0], float(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
