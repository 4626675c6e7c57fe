"""``python -m prunekit`` = the ``prunekit`` command."""

import sys

from .cli import main

sys.exit(main())
