"""``python -m interp SUBCOMMAND ...``: the ``interp`` command (:mod:`interp.cli`), for environments where the
console script is not on ``PATH``."""

import sys

from interp.cli import main

if __name__ == "__main__":
    sys.exit(main())
