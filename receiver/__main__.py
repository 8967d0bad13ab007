"""Lets ``python -m receiver`` behave like the ``receiver`` console script."""

from receiver.cli import main

raise SystemExit(main())
