"""``python -m adatriton.calibrate``: the dispatcher's crossover calibration (:mod:`adatriton.tools.calibrate`)."""

import sys

from .tools.calibrate import DEFAULT_DENSITIES, calibrate, crossover, main, table

__all__ = ["DEFAULT_DENSITIES", "calibrate", "crossover", "main", "table"]

if __name__ == "__main__":
    main(sys.argv[1:])
