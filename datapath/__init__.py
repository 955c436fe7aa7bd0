"""ovl-dp forwarding plane: TAP, tunnel sockets, FDB and the event loop.

Nothing in this package imports ``control``: the control plane builds a
:class:`datapath.config.Config` (resolved) and hands it to :class:`datapath.engine.Engine`.
"""
