"""`python -m imagegate` is the `imagegate` command."""

import sys

from imagegate.commands.cli import main

sys.exit(main())
