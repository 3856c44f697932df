"""``python -m adatriton.calibrate``: the dispatcher's crossover calibration CLI
(:func:`adatriton.tools.calibrate.main`)."""

import sys

from .tools.calibrate import main

if __name__ == "__main__":
    main(sys.argv[1:])
