"""`python -m masksmith.cli.app`: the `masksmith` command."""

import sys

from masksmith.cli.app import main

main()
sys.exit(0)
