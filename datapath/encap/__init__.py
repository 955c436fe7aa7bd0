"""The encapsulations, one module each, behind one table.

:data:`ENCAPS` maps a mode name (``--mode``) to its :class:`~datapath.encap.base.Encap`
subclass; :func:`lookup` is the one place on the Python side that chooses by
protocol. Adding one (Geneve, an IPv6 outer header) means adding a module here
and a table entry, on each side (the C table is in ``csrc/encap.c``).
"""

from __future__ import annotations

from datapath.encap.base import Encap
from datapath.encap.gre import Gre
from datapath.encap.vxlan import Vxlan

ENCAPS: dict[str, type[Encap]] = {cls.name: cls for cls in (Vxlan, Gre)}
MODES: tuple[str, ...] = tuple(ENCAPS)


def lookup(mode: str) -> type[Encap]:
    """The Encap class of mode; KeyError for a name that is not one of MODES."""
    return ENCAPS[mode]


__all__ = ["ENCAPS", "MODES", "Encap", "lookup"]
