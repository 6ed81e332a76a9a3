"""Thin LightningModules: a step is a core forward, a loss dict and logging."""
