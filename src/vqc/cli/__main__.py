"""`python -m vqc.cli`: the `vqc` command."""
import sys

from . import main

sys.exit(main())
