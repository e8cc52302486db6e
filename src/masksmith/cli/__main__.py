"""`python -m masksmith.cli`: the `masksmith` command."""

import sys

from masksmith.cli import main

main()
sys.exit(0)
