"""``make demo``: run the quickstart sweep (examples/quickstart.yaml) and print its summary."""

from __future__ import annotations

import sys
from pathlib import Path

from .cli import main

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"

if __name__ == "__main__":
    sys.exit(main(["run", str(QUICKSTART), *sys.argv[1:]]))
