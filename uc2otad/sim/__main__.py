"""``python -m uc2otad.sim``: the same as ``uc2otad-sim``."""

import sys

from uc2otad.sim.cli import main

sys.exit(main())
