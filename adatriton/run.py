"""``python -m adatriton.run``: a converted model over a folder of images (:func:`adatriton.tools.run.main`)."""

import sys

from .tools.run import main

if __name__ == "__main__":
    main(sys.argv[1:])
