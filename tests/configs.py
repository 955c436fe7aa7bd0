"""Configurations for the datapath tests, written compactly.

The datapath takes a resolved :class:`datapath.config.Config` (grouped as a user
thinks of it); the tests describe many small ones, so this builds one from flat
keywords: mode, remotes (resolved Remote objects), underlay_mtu, tap_mtu, and
optionally vni, key, port, udp_csum, ttl, vlan_map, tap_name, tap_mac, fdb_max,
fdb_ageing, statics ((MAC, remote index or address[, VLAN])), batch,
tap_offloads, rx_coalesce, udp_gso, fast.
"""

from __future__ import annotations

import os
from typing import Any

from datapath.config import (
    Config,
    FdbConfig,
    OffloadConfig,
    Remote,
    StaticEntry,
    TapConfig,
    TunnelConfig,
)
from datapath.fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES

DEFAULT_MAC = b"\x02\x00\x00\x00\x00\x01"


def examples(n: int) -> int:
    """Hypothesis max_examples for a long property test: n, scaled by OVL_HYPOTHESIS_SCALE (tests/sanitize runs
    the tests under ASan with fewer; never below 10)."""
    return max(10, round(n * float(os.environ.get("OVL_HYPOTHESIS_SCALE", "1"))))


def _by_address(entry: tuple[Any, ...], remotes: tuple[Remote, ...]) -> tuple[Any, ...]:
    """A static entry naming its remote by index, as naming it by address (other shapes as they are)."""
    if len(entry) >= 2 and isinstance(entry[1], int):
        return (entry[0], remotes[entry[1]].addr, *entry[2:])
    return entry


def datapath_config(
    *,
    mode: str,
    remotes: tuple[Remote, ...],
    underlay_mtu: int,
    tap_mtu: int,
    vni: int | None = None,
    key: int | None = None,
    port: int | None = None,
    udp_csum: bool = False,
    ttl: int = 64,
    vlan_map: tuple[tuple[int, int], ...] = (),
    tap_name: str = "ovl0",
    tap_mac: bytes = DEFAULT_MAC,
    fdb_max: int = DEFAULT_MAX_ENTRIES,
    fdb_ageing: float = DEFAULT_AGEING,
    statics: tuple[Any, ...] = (),
    batch: int = 64,
    tap_offloads: bool = True,
    rx_coalesce: bool = False,
    udp_gso: bool = False,
    fast: bool = True,
    udp6_zero_csum_tx: bool = False,
) -> Config:
    """A resolved Config from flat keywords (see the module docstring)."""
    static = tuple(StaticEntry.from_value(_by_address(s, remotes)) for s in statics)
    return Config(
        tunnel=TunnelConfig(
            mode,
            vni=vni,
            key=key,
            port=port,
            udp_csum=udp_csum,
            ttl=ttl,
            vlan_map=vlan_map,
            underlay_mtu=underlay_mtu,
            udp6_zero_csum_tx=udp6_zero_csum_tx,
        ),
        remotes=remotes,
        tap=TapConfig(name=tap_name, mtu=tap_mtu, mac=tap_mac),
        fdb=FdbConfig(max_entries=fdb_max, ageing=fdb_ageing, static=static),
        offload=OffloadConfig(
            policy="auto" if tap_offloads else "off", udp_gso=udp_gso, fast_path=fast, rx_coalesce=rx_coalesce
        ),
        batch=batch,
    )
