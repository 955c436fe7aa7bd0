"""The datapath's devices and sockets: the TAP (:mod:`.tap`) and the underlay (:mod:`.underlay`).

Opening, probing and configuring them lives here; the per-batch syscalls are
the forwarder's one I/O step (C: ``csrc/io.c``; Python: ``datapath.pypath``).
"""
