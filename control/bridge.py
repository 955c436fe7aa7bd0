"""Plugging the TAP into a bridge: a Linux bridge (rtnetlink, pyroute2) or Open vSwitch (ovs-vsctl).

Linux bridge: the TAP becomes a bridge port; closing the TAP removes it.
Open vSwitch: the TAP is added as a port (``--may-exist``: idempotent),
a trunk unless a tag makes it an access port; it is deleted again on exit,
and re-added while ovl-dp runs if the port disappears or ovs-vswitchd comes
back without it (see :meth:`Bridge.keep_attached`).

A port row of our TAP's name that is there before our TAP exists (a previous
ovl-dp killed with SIGKILL, or our TAP deleted and re-created) is stale:
ovs-vswitchd keeps its handle on the deleted device ("error receiving Ethernet
packet on ovl-vxlan: Network is down") even though the row's ``ifindex`` column
follows the new device, and ``--may-exist add-port`` changes nothing. Such a
row is deleted and the port added again, in two transactions
(:meth:`Bridge.replace_port`); then OVS opens the new device. The new port asks
for the old one's OpenFlow port number (``ofport_request``), so that flows naming
it (``in_port=``, ``output:``) still match after a crash-restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from control import ovs
from datapath.errors import SetupError

log = logging.getLogger("ovl-dp")

BRIDGE_TYPES = ("auto", "linux", "ovs", "none")
OVS_WATCH_INTERVAL = 2.0


def _link_kind(name: str) -> str | None:
    """The rtnetlink kind of interface name ('bridge', 'tun', ...), '' if none, None if it does not exist."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        info = ipr.get_links(idx[0])[0].get_attr("IFLA_LINKINFO")
    return (info.get_attr("IFLA_INFO_KIND") if info else None) or ""


def _ovs_has_bridge(ovsdb: str | None, name: str, required: bool) -> bool:
    """Whether OVS knows bridge name; when required, OVS missing or unreachable is an error, not 'no'."""
    problem = ovs.installed()
    if problem is None:
        where = ovsdb or "ovs-vsctl's default (OVS_RUNDIR)"
        try:
            res = ovs.run_vsctl(ovsdb, "br-exists", name, timeout=3)
        except ovs.OvsError as exc:
            problem = f"cannot reach the Open vSwitch database at {where}: {exc}"
        else:
            if res.returncode in (0, 2):  # 2: no such bridge
                return res.returncode == 0
            problem = f"cannot reach the Open vSwitch database at {where}: {res.stderr.strip()}"
    if required:
        raise SetupError(problem)
    return False


@dataclass(frozen=True)
class Bridge:
    """Where the TAP goes: name, kind ('linux', 'ovs' or 'none'), and OVS port settings."""

    name: str
    kind: str
    ovsdb: str | None = None
    tag: int | None = None

    def attach(self, tap: str) -> None:
        """Make tap (just created) a port of the bridge; on OVS a row left from before it is replaced."""
        if self.kind == "linux":
            _attach_linux(self.name, tap)
        elif self.kind == "ovs":
            ofport = self._ovs_ofport(tap)
            if ofport is not None:
                log.info(
                    "Open vSwitch still has a port %s from before (a previous ovl-dp that did not exit cleanly?): "
                    "replacing it so that OVS opens the new TAP", tap,
                    extra={"event": "ovs_stale_port", "port": tap},
                )  # fmt: skip
                self.replace_port(tap, ofport)
            else:
                self._ovs_add(tap)

    def _ovs_ofport(self, tap: str, what: str = "read port") -> str | None:
        """The ofport column of tap's interface row ("[]" before OVS assigned one), None for no row."""
        try:
            out = ovs.vsctl(self.ovsdb, "--if-exists", "get", "interface", tap, "ofport").strip()
        except ovs.OvsError as exc:
            raise SetupError(f"cannot {what} {tap} of Open vSwitch bridge {self.name}: {exc}") from None
        return out or None

    def replace_port(self, tap: str, ofport: str | None = None) -> None:
        """OVS: delete tap's port (wherever it is) and add it again, in two transactions, so that
        ovs-vswitchd closes its handle on the old device and opens the one now named tap. The new
        port asks for the old one's OpenFlow port number (ofport, read here when not given)."""
        if ofport is None:
            ofport = self._ovs_ofport(tap, what="remove the stale port")
        try:
            ovs.vsctl(self.ovsdb, "--if-exists", "del-port", tap)
        except ovs.OvsError as exc:
            raise SetupError(f"cannot remove the stale port {tap} from Open vSwitch: {exc}") from None
        self._ovs_add(tap, ofport_request=int(ofport) if ofport and ofport.isdigit() and int(ofport) > 0 else None)

    def _ovs_add(self, tap: str, ofport_request: int | None = None) -> None:
        args = ["--may-exist", "add-port", self.name, tap]
        if self.tag is not None:
            args.append(f"tag={self.tag}")
        if ofport_request is not None:
            args += ["--", "set", "interface", tap, f"ofport_request={ofport_request}"]
        try:
            ovs.vsctl(self.ovsdb, *args)
        except ovs.OvsError as exc:
            raise SetupError(f"cannot add {tap} to Open vSwitch bridge {self.name}: {exc}") from None

    def detach(self, tap: str) -> None:
        """Remove tap from the bridge (OVS keeps a port row otherwise; a Linux bridge needs nothing)."""
        if self.kind != "ovs":
            return
        try:
            ovs.vsctl(self.ovsdb, "--if-exists", "del-port", self.name, tap, timeout=5)
        except ovs.OvsError as exc:
            log.warning("could not remove port %s from %s: %s", tap, self.name, exc)

    async def keep_attached(
        self, tap: str, interval: float = OVS_WATCH_INTERVAL, report: Callable[[str], None] | None = None
    ) -> None:
        """OVS only: every interval, re-add the port if its row is gone (an operator, a fresh database).

        A restarted ovs-vswitchd re-opens the TAP by itself from the port row; a
        port that OVS cannot open (ofport -1) is reported once, with OVS's error.
        report, if given, gets the outcome of every check ("" when the port is fine).
        """
        if self.kind != "ovs":
            return
        db = [f"--db={self.ovsdb}"] if self.ovsdb else []
        vsctl_path = ovs.vsctl_path()
        reported = ""
        while True:
            await asyncio.sleep(interval)
            try:
                problem = await self._check_port(vsctl_path, db, tap)
            except Exception as exc:  # the watcher must outlive any one failed check
                problem = f"checking port {tap} failed: {exc}"
            if problem and problem != reported:
                log.warning("%s", problem)
            reported = problem
            if report is not None:
                report(problem)

    async def _check_port(self, vsctl_path: str, db: list[str], tap: str) -> str:
        """Re-add the port if its row is gone; returns what is wrong, or ''."""
        proc = await asyncio.create_subprocess_exec(
            vsctl_path, "--timeout=2", *db, "--if-exists", "get", "interface", tap, "ofport", "error",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        fields = out.decode().split("\n", 1)
        if proc.returncode != 0:
            return f"Open vSwitch database unreachable: {err.decode().strip()}"
        if not out.strip():
            log.info("port %s missing from %s: re-adding", tap, self.name)
            try:
                await asyncio.to_thread(self._ovs_add, tap)
            except SetupError as exc:
                return str(exc)
            return ""
        if fields[0].strip() == "-1":
            return f"Open vSwitch cannot use {tap}: {fields[1].strip() if len(fields) > 1 else 'ofport -1'}"
        return ""


def resolve(name: str, bridge_type: str, ovsdb: str | None = None, tag: int | None = None) -> Bridge:
    """Check that the bridge exists and is of the asked type; SetupError with a clear message otherwise."""
    if bridge_type == "none":
        return Bridge(name, "none")
    kind = _link_kind(name)
    if bridge_type in ("auto", "linux") and kind == "bridge":
        if tag is not None:
            raise SetupError("--tag is for Open vSwitch bridges; on a Linux bridge use VLAN filtering")
        return Bridge(name, "linux")
    if bridge_type == "ovs" or (bridge_type == "auto" and kind != "bridge"):
        if _ovs_has_bridge(ovsdb, name, required=bridge_type == "ovs"):
            return Bridge(name, "ovs", ovsdb, tag)
        if bridge_type == "ovs":
            raise SetupError(f"Open vSwitch has no bridge {name} (ovs-vsctl add-br {name})")
    if kind is None:
        raise SetupError(
            f"bridge {name} does not exist (create it: ip link add {name} type bridge, or ovs-vsctl add-br {name}; "
            "or run with --bridge-type none)"
        )
    raise SetupError(f"{name} is not a Linux bridge (kind {kind or 'unknown'}); choose another --bridge")


def linux_attachment_problem(bridge: str, tap: str) -> str:
    """Why tap is not a port of Linux bridge bridge (its master), or "" when it is."""
    try:
        br, port, master = linux_port_state(bridge, tap)
    except (NetlinkError, OSError) as exc:
        return f"cannot read whether {tap} is attached to bridge {bridge}: {exc}"
    if br is None:
        return f"TAP {tap} is not attached: bridge {bridge} does not exist"
    if port is None:
        return f"TAP {tap} does not exist"
    if master != br:
        return f"TAP {tap} is not attached to bridge {bridge}"
    return ""


def linux_port_state(bridge: str, tap: str) -> tuple[int | None, int | None, int]:
    """(bridge's ifindex or None, tap's ifindex or None, tap's master ifindex or 0); NetlinkError/OSError
    if it cannot be read. Not on a running asyncio loop (pyroute2's IPRoute runs a loop of its own)."""
    with IPRoute() as ipr:
        br = ipr.link_lookup(ifname=bridge)
        port = ipr.link_lookup(ifname=tap)
        master = ipr.get_links(port[0])[0].get_attr("IFLA_MASTER") if port else None
    return (br[0] if br else None), (port[0] if port else None), int(master or 0)


def _attach_linux(bridge: str, tap: str) -> None:
    with IPRoute() as ipr:
        try:
            br = ipr.link_lookup(ifname=bridge)
            port = ipr.link_lookup(ifname=tap)
            if not br:
                raise SetupError(f"bridge {bridge} disappeared before the TAP could be attached")
            if not port:
                raise SetupError(f"TAP {tap} disappeared before it could be attached to bridge {bridge}")
            ipr.link("set", index=port[0], master=br[0])
        except NetlinkError as exc:
            raise SetupError(f"cannot attach {tap} to bridge {bridge}: {exc}") from None
