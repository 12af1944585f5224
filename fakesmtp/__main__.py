"""``python -m fakesmtp``."""

from __future__ import annotations

import sys

from fakesmtp.cli import main

if __name__ == "__main__":
    sys.exit(main())
