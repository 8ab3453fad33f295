"""``python -m model``: see :mod:`model.tools.cli` (sample, import-hf, export-hf, info)."""

from __future__ import annotations

import sys

from model.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
