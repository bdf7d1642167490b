"""``python -m autoprompt`` runs the CLI."""

import sys

from autoprompt.cli import main

sys.exit(main())
