"""twistd entry point: ``Options`` and ``makeService``.

Start-up errors (bad configuration, unusable TLS files, a store that cannot be
opened) are printed as one line naming the key and end the process with status
1, before any port is bound; so is a listener that cannot bind its address,
which names the ``[listen]`` key and the address.

Under ``twistd --uid/--gid`` as root, the ports are bound as root and the
privileges dropped before the service starts; what the service tree creates
while it is built (the account store, the generated certificate, the SRS key,
the Maildir and queue folders) is created with the target user's ids and
groups, so that user owns every file the server later writes to. Only the
certificate and key are read as root (certbot keeps its keys root's alone);
a renewed pair is read by the server, as that user.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import pwd
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import usage

from mailstack import config
from mailstack.errors import StartupError

_log = Logger()


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


def _ignore_further_stops() -> None:
    """Once shutdown has begun, another SIGTERM or SIGINT (a supervisor and a wrapper both sending
    one) is noted, not handed to a reactor that is no longer running (a traceback in the log)."""
    def already(signum: int, frame: object) -> None:
        _log.info("signal {signum} received while already stopping", signum=signum)

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, already)


def _exit_zero_after_sigterm(reactor: object) -> None:
    """A SIGTERM that led to a clean shutdown is a normal stop: exit 0, not -15.

    twistd re-raises the signal that stopped the reactor once it has run down
    (``_exitSignal``); after a completed, orderly shutdown there is nothing to
    report, so it is cleared. SIGINT and others keep the default behaviour.
    """
    if getattr(reactor, "_exitSignal", None) == signal.SIGTERM:
        reactor._exitSignal = None  # type: ignore[attr-defined]  # twistd reads it after run()


def _fail(message: str) -> NoReturn:
    # once twistd logs, sys.stderr goes to the log: the line goes to the log and to the real stderr
    for stream in {id(s): s for s in (sys.stderr, sys.__stderr__) if s is not None}.values():
        stream.write(f"mailstack: {message}\n")
        stream.flush()
    raise SystemExit(1)


class _StartupGuard(MultiService):
    """Turns a :class:`StartupError` while the ports are bound into one line and exit status 1,
    removing the pid file twistd wrote for this process (twistd keeps it on SystemExit)."""

    def __init__(self, top: IService, pidfile: str | None) -> None:
        super().__init__()
        self.pidfile = pidfile
        top.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError as e:
            self._exit(str(e))

    def startService(self) -> None:
        try:
            super().startService()
        except StartupError as e:
            self._exit(str(e))

    def _exit(self, message: str) -> None:
        if self.pidfile:
            path = Path(self.pidfile)
            with contextlib.suppress(OSError, ValueError):
                if int(path.read_text().strip()) == os.getpid():
                    path.unlink()
        _fail(message)


@contextlib.contextmanager
def _as_user(options: usage.Options) -> Iterator[None]:
    """Create files as twistd's ``--uid``/``--gid`` user (effective ids) while the tree is built."""
    parent = getattr(options, "parent", None)
    uid = parent.get("uid") if parent is not None else None
    gid = parent.get("gid") if parent is not None else None
    if os.geteuid() != 0 or uid is None:  # a --gid alone: the files keep the user's own ids
        yield
        return
    for codec in ("idna", "punycode", "utf-8", "ascii", "latin-1"):  # imported at first use, by then maybe
        codecs.lookup(codec)  # from files the --uid user cannot read (an interpreter in root's home)
    user = pwd.getpwuid(uid)
    gid = user.pw_gid if gid is None else int(gid)
    groups = os.getgroups()
    try:
        os.setgroups(os.getgrouplist(user.pw_name, gid))  # root's own groups must not open doors
        os.setegid(gid)
        os.seteuid(uid)
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from mailstack.memory import return_large_blocks
    from mailstack.service import build_service
    from mailstack.tls import ServerTLS, TLSError, ensure_certificate

    return_large_blocks()
    reactor.addSystemEventTrigger("after", "shutdown", _exit_zero_after_sigterm, reactor)
    reactor.addSystemEventTrigger("before", "shutdown", _ignore_further_stops)
    base = _base_dir(options)
    path = options["config"] or config.default_path(cwd=base)
    try:
        settings = config.load(path, base=base)
        if not settings.tls.cert.exists() and not settings.tls.key.exists():
            with _as_user(options):  # a generated certificate is the user's
                ensure_certificate(settings.tls, settings.hostname)
        tls = ServerTLS(settings.tls, settings.hostname)  # read as root: certbot's key is root's alone
        with _as_user(options):
            top = build_service(settings, reactor, tls=tls)
    except (config.ConfigError, StartupError, TLSError) as e:
        _fail(str(e))
    parent = getattr(options, "parent", None)
    return _StartupGuard(top, parent.get("pidfile") if parent is not None else None)
