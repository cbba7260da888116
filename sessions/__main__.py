"""``python -m sessions``: the same command line as the ``sessions`` console script.

The commands live in :mod:`sessions._tools.cli`; this module only forwards to them, so
``python -m sessions ...`` and ``sessions ...`` cannot drift apart.
"""

from __future__ import annotations

import sys

from sessions._tools.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
