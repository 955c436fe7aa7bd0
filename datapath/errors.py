"""The one exception the datapath raises for problems a user can fix."""


class SetupError(Exception):
    """Start-up failed for a reason worth one clear line (no privileges, port in use, ...)."""
