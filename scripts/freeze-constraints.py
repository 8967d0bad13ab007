#!/usr/bin/env python3
"""Write ``constraints.txt``: the runtime dependencies resolved in this virtualenv.

The Dockerfile installs exactly these pins, so the image runs what the tests ran.
Run after changing ``[project.dependencies]`` (``make constraints``); it walks the
installed metadata from ``alert-receiver`` down, skipping the ``dev`` extra, so
test and lint tools never reach the image.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "alert-receiver"
HEADER = """\
# Runtime dependencies of alert-receiver, pinned to the versions resolved in the
# development virtualenv. The Dockerfile installs exactly these. Regenerate after
# changing [project.dependencies] in pyproject.toml:
#     make constraints      (runs scripts/freeze-constraints.py)
"""


def resolve(name: str, extras: tuple[str, ...], seen: dict[str, str]) -> None:
    """Add ``name`` and everything it requires (for ``extras``) to ``seen``."""
    key = canonicalize_name(name)
    try:
        dist = distribution(key)
    except PackageNotFoundError:
        sys.exit(f"{key} is required but not installed; run `make` first")
    first = key not in seen
    seen[key] = dist.version
    if not first and not extras:
        return
    for line in dist.requires or []:
        req = Requirement(line)
        wanted = extras or ("",)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in wanted):
            continue
        resolve(req.name, tuple(sorted(req.extras)), seen)


def main() -> int:
    """Print or write the pins (``--check`` exits 1 when the file is stale)."""
    seen: dict[str, str] = {}
    resolve(PROJECT, (), seen)
    seen.pop(canonicalize_name(PROJECT))
    text = HEADER + "".join(f"{k}=={v}\n" for k, v in sorted(seen.items()))
    target = Path(__file__).resolve().parent.parent / "constraints.txt"
    if "--check" in sys.argv[1:]:
        if target.read_text(encoding="utf-8") != text:
            print(f"{target} is stale; run `make constraints`", file=sys.stderr)
            return 1
        return 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {len(seen)} pins to {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
