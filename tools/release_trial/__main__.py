"""`python3 -m tools.release_trial ...` from the repository root."""

import sys

from .cli import main

sys.exit(main())
