"""`python3 -m tools.sandbox ...` from the repository root."""

from tools.sandbox.cli import main

raise SystemExit(main())
