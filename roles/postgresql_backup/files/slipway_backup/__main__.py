"""python3 -m slipway_backup: the same as /usr/local/sbin/slipway-backup."""

import sys

from slipway_backup.cli import main

sys.exit(main())
