"""Timestep caching: one base class (``base``), diffusers hooks (``hooks``), one module per strategy,
the registry, calibration profiles (``profiles``, torch-free). Import from the modules: this package
imports nothing itself, so reading profiles does not load torch."""
