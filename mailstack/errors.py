"""Errors shared across packages."""

from __future__ import annotations


class StartupError(Exception):
    """mailstack cannot start; the message is one line naming the cause (and config key)."""


class ListenError(StartupError):
    """A listener cannot bind its address (in use, no permission, no such interface)."""
