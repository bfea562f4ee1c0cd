"""twistd entry point: ``Options`` and ``makeService``.

Start-up errors (bad configuration, unusable TLS files, a store that cannot be
opened) are printed as one line naming the key and end the process with status
1, before any port is bound.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from twisted.application.service import IService
from twisted.python import usage

from mailstack import config
from mailstack.errors import StartupError


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = (
        "Run mailstack. Without --config: $MAILSTACK_CONFIG, else etc/mailstack.toml "
        "in the current directory, else the built-in defaults."
    )
    optParameters = [
        ["config", "c", None, "path of the TOML configuration file"],
    ]


def _base_dir(options: usage.Options) -> Path:
    parent = getattr(options, "parent", None)
    rundir = parent.get("rundir") if parent is not None else None
    return Path(rundir or os.getcwd()).absolute()


def _exit_zero_after_sigterm(reactor: object) -> None:
    """A SIGTERM that led to a clean shutdown is a normal stop: exit 0, not -15.

    twistd re-raises the signal that stopped the reactor once it has run down
    (``_exitSignal``); after a completed, orderly shutdown there is nothing to
    report, so it is cleared. SIGINT and others keep the default behaviour.
    """
    if getattr(reactor, "_exitSignal", None) == signal.SIGTERM:
        reactor._exitSignal = None  # type: ignore[attr-defined]  # twistd reads it after run()


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from mailstack.memory import return_large_blocks
    from mailstack.service import build_service

    return_large_blocks()
    reactor.addSystemEventTrigger("after", "shutdown", _exit_zero_after_sigterm, reactor)
    base = _base_dir(options)
    path = options["config"] or config.default_path(cwd=base)
    try:
        settings = config.load(path, base=base)
        return build_service(settings, reactor)
    except (config.ConfigError, StartupError) as e:
        sys.stderr.write(f"mailstack: {e}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
