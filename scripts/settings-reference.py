#!/usr/bin/env python3
"""Write docs/settings.md from the settings model's field descriptions.

Run after changing a setting (its description, default, name or group); the
test suite fails while the file and the model disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from receiver.settings.reference import render

TARGET = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def main() -> int:
    """Write the file; print where."""
    TARGET.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {TARGET}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
