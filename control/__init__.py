"""ovl-dp control plane: CLI, configuration, bridge attachment, control socket, the lab."""
