"""Running commands for the lab: its one error type, a command with its output, a command inside a namespace.

Shared by the lab's hosts, its peers and private OVS instances, the benchmark and
the tests. Waiting for something to happen is control.procs.wait_until.
"""

from __future__ import annotations

import subprocess


class LabError(Exception):
    """A lab step failed; the message says which and shows its output."""


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; LabError with its output if it fails and check is set."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


def nsexec(ns: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run cmd inside network namespace ns (LabError with its output if it fails and check is set)."""
    return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)


def mac_of(ns: str, dev: str) -> str:
    """The MAC address of dev in namespace ns, lower case."""
    return sh("ip", "-n", ns, "-br", "link", "show", dev).stdout.split()[2].lower()
