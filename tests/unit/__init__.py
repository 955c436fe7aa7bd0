"""Unit tests: one module per source module, pure (no network namespaces)."""
