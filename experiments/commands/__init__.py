"""Subcommands of the ``face3d`` CLI (one module each)."""
