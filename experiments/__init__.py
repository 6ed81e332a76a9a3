"""Entry points (the ``face3d`` command), experiment configs and sweeps."""
