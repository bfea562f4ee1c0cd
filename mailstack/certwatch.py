"""Certificate reload: SIGHUP, or a change to ``tls.cert`` or ``tls.key``, puts the new
certificate on every TLS listener without a restart.

Certbot and its kin renew a certificate every 60–90 days by replacing the files;
this service looks at them once a minute (on the io pool: a ``stat`` of each)
and at once on SIGHUP. A new pair that loads and matches is used for every
handshake from then on, and sessions already open go on with the one they
started with. A pair that does not load (half written, a key that does not
match, unreadable) is refused with an error in the log, once per change, and
the certificate in use stays.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from mailstack.tls import ServerTLS, TLSError, file_stamp, load_options

log = Logger()

CHECK_INTERVAL = 60.0
_NOTHING = object()  # no refusal yet (a stamp may itself be None: a file that cannot be looked at)

__all__ = ["CertificateWatch"]


class CertificateWatch(Service):
    """Keeps :class:`ServerTLS` in step with its files while the server runs."""

    def __init__(self, tls: ServerTLS, *, clock: IReactorTime, threads: IReactorFromThreads,
                 run: Callable[..., Deferred[Any]], interval: float = CHECK_INTERVAL) -> None:
        self.tls = tls
        self.clock = clock
        self.threads = threads
        self.run = run
        self.interval = interval
        self.refused: object = _NOTHING  # the files (stamp) last refused: said once, not every minute
        self._loop: LoopingCall | None = None
        self._previous: Any = None
        self._checking: Deferred[None] | None = None
        self._again = False
        self.setName("certificate-watch")

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("tls: the certificate check stopped", f))
        if threading.current_thread() is threading.main_thread():  # an embedding program keeps its signals
            self._previous = signal.signal(signal.SIGHUP, self._sighup)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return self._checking

    def _sighup(self, signum: int, frame: object) -> None:
        self.threads.callFromThread(self.check, True)

    def check(self, force: bool = False) -> Deferred[None]:
        """Reload if the files changed (or always, with *force*); one check at a time."""
        if self._checking is not None:
            self._again = self._again or force
            return self._checking
        d = self._checking = Deferred.fromCoroutine(self._check(force))

        def done(result: object) -> object:
            self._checking = None
            if self._again and self.running:
                self._again = False
                self.check(True)
            return result

        d.addBoth(done)
        d.addErrback(lambda f: log.failure("tls: the certificate check failed", f))
        return d

    async def _check(self, force: bool) -> None:
        settings = self.tls.settings
        stamp = await self.run(file_stamp, settings)
        if not force and (stamp == self.tls.stamp or stamp == self.refused):
            return
        try:
            options, cert = await self.run(load_options, settings)
        except TLSError as e:
            if force or stamp != self.refused:
                log.error("tls: the new certificate is refused, the one in use stays: {error}", error=str(e))
            self.refused = stamp
            return
        self.tls.use(options, stamp)
        self.refused = _NOTHING
        log.info("tls: certificate reloaded from {cert}: {subject}, valid until {expires}",
                 cert=str(settings.cert), subject=cert.subject.rfc4514_string(),
                 expires=cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"))
