"""Entry points: autotuning, dispatcher calibration and training (``python -m adatriton.autotune`` etc.)."""
