"""Engine.replace_tap and the lost-TAP callback, on a real TAP deleted under a running engine; C and Python paths.

The engine reads its TAP on a real asyncio (uvloop) loop in a namespace of the
test's own; `ip link del` removes the device, the next read fails (EBADFD), the
engine stops reading the dead fd and calls on_tap_lost once; replace_tap opens
the TAP again with the same name, MAC, MTU and virtio header, and keeps the FDB,
the remotes and the counters.
"""

from __future__ import annotations

import asyncio
import errno
import json

import pytest
import uvloop

from datapath.engine import TAP_GONE_ERRNOS, Engine
from datapath.errors import SetupError
from tests.isolated import run_isolated
from tests.netns.netutil import ip, mac_of, mtu_of
from tests.netns.test_engine import MAC_B, PATHS, REMOTE, TAP, TAP_MAC, engine_cfg, skip_without_c, underlay

pytestmark = pytest.mark.netns

WAIT = 20.0  # an upper bound for the loss to be noticed, never a speed requirement


def _vnet_hdr(name: str) -> bool:
    """Whether the TAP name was opened with IFF_VNET_HDR (`ip -d -j link`)."""
    rows = json.loads(ip("-d", "-j", "link", "show", "dev", name))
    return bool(rows[0]["linkinfo"]["info_data"].get("vnet_hdr"))


# uvloop stops watching an fd on EPOLLERR by itself; asyncio's own loop keeps reporting it readable, so
# only there does a datapath that went on reading the dead fd show (io_errors would climb).
LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("path", [*PATHS, "fast-loop"])  # fast: the data-path thread; fast-loop: without
def test_deleted_tap_is_noticed_once_and_replaced(path: str, loop_kind: str) -> None:
    skip_without_c(path)

    def body() -> None:
        underlay()
        engine = Engine(engine_cfg("vxlan", path))
        engine.fdb_add(MAC_B, REMOTE)
        vnet = _vnet_hdr(TAP)
        lost: list[OSError] = []
        loop = LOOPS[loop_kind]()

        async def run() -> None:
            gone = asyncio.Event()

            def on_lost(exc: OSError) -> None:
                lost.append(exc)
                gone.set()

            engine.on_tap_lost = on_lost
            engine.start(loop)
            ip("link", "del", TAP)
            await asyncio.wait_for(gone.wait(), WAIT)
            await asyncio.sleep(0.2)  # the dead fd stays readable (EPOLLERR): it must not be read again
            assert len(lost) == 1 and lost[0].errno in TAP_GONE_ERRNOS, lost
            assert engine.io_errors == 1, engine.io_errors  # one failed read, then the fd left alone
            assert lost[0].errno == errno.EBADFD
            engine.replace_tap()
            assert engine.tap_recreated == 1
            assert mac_of(TAP) == TAP_MAC and mtu_of(TAP) == 1400 and _vnet_hdr(TAP) == vnet
            assert engine.tap.fileno() >= 0
            # The FDB and the remote survive.
            assert [r["mac"] for r in engine.fdb_table()] == ["02:00:00:00:00:bb"]
            assert [r.addr for r in engine.remotes()] == [REMOTE]
            # Deleted again: noticed again (once more), not silence.
            ip("link", "del", TAP)
            gone.clear()
            await asyncio.wait_for(gone.wait(), WAIT)
            assert len(lost) == 2

        try:
            loop.run_until_complete(run())
        finally:
            engine.close()
            loop.close()

    run_isolated(body)


@pytest.mark.parametrize("path", PATHS)
def test_replace_tap_refused_when_the_name_is_taken(path: str) -> None:
    skip_without_c(path)

    def body() -> None:
        underlay()
        engine = Engine(engine_cfg("gre", path))
        ip("link", "del", TAP)
        ip("link", "add", TAP, "type", "veth", "peer", "name", "other0")
        with pytest.raises(SetupError, match="not a TAP"):
            engine.replace_tap()
        engine.close()  # with its TAP closed by the failed replace: no error

    run_isolated(body)
