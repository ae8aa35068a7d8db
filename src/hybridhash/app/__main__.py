"""``python -m hybridhash.app``: the ``hybridhash`` command, for ``torchrun -m hybridhash.app train ...``."""
import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
