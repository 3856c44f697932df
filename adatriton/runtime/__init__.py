"""Execution settings: backend selection, the per-layer dispatcher, calibration files, the autotune cache, the cache
directory and hardware names, and the timer. Imports nothing from the other layers of :mod:`adatriton`."""
