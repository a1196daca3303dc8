"""Animation methods."""
