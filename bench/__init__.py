"""Benchmarks of adatriton; ``python -m bench --out results`` runs the main job (see :mod:`bench.backbone`)."""
