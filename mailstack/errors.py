"""Errors shared across packages."""

from __future__ import annotations


class StartupError(Exception):
    """mailstack cannot start; the message is one line naming the cause (and config key)."""
