"""Sampling building blocks shared by several methods: sliding temporal windows (X-Dyna),
inversion and fusion schedules (AnyI2V, I2V3D)."""
