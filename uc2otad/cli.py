"""What every uc2otad command line shares: sysexits' exit codes for usage errors.

argparse exits 2 on a usage error, but our command lines give 2 its own meaning (espota: upload
timeout; uc2otactl: nothing to do; uc2otad: invalid configuration), so a bad command line exits 64
(``EX_USAGE``) everywhere, as CONTRACT.md §5 says.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

#: sysexits.h: a bad command line
EX_USAGE = 64
#: sysexits.h: an input file that cannot be read
EX_NOINPUT = 66


class UsageErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with 64 instead of 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")
