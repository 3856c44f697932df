"""``python -m adatriton.autotune``: the autotuning CLI (:func:`adatriton.tools.autotune.main`)."""

import sys

from .tools.autotune import main

if __name__ == "__main__":
    main(sys.argv[1:])
