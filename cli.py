"""Launcher for a checkout: ``python cli.py train ...`` runs the ``dcls-audio`` command
(:mod:`dcls_audio.cli`) without installing the package."""

from __future__ import annotations

import sys

from dcls_audio.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
