"""Subcommands this package adds to `revoc` (see revoc/cli.py)."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands; each sets `run(settings, args)` as its default."""
