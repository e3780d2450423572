"""``python -m thetadist.tracker [HOST:PORT]``: the embedded tracker alone (no typer/rich)."""

import sys

from thetadist.tracker.server import main

sys.exit(main())
