"""`python -m flowsdf` is the `flowsdf` command."""

import sys

from flowsdf.cli import main

sys.exit(main())
