"""The certificate watch without sockets: a change to the files is picked up at the next minute's
look, a bad pair is refused once (not every minute) and the one in use stays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import trustme
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from mailstack.certwatch import CHECK_INTERVAL, CertificateWatch
from mailstack.config import TLSSettings
from mailstack.tls import ServerTLS


class _Now:
    """Runs the io pool's work at once, on the caller's thread."""

    def callFromThread(self, f: Any, *args: Any) -> None:
        f(*args)


def _run(fn: Any, *args: Any) -> Deferred[Any]:
    return maybeDeferred(fn, *args)


def _write(settings: TLSSettings, leaf: trustme.LeafCert, *, key: bytes | None = None) -> None:
    settings.cert.write_bytes(leaf.cert_chain_pems[0].bytes())
    settings.key.write_bytes(key if key is not None else leaf.private_key_pem.bytes())


def test_a_changed_pair_is_used_after_the_next_look_and_a_bad_one_is_refused_once(tmp_path: Path) -> None:
    settings = TLSSettings(tmp_path / "cert.pem", tmp_path / "key.pem", False, False)
    ca = trustme.CA()
    first, second = ca.issue_cert("mail.example.test"), ca.issue_cert("mail.example.test")
    _write(settings, first)
    tls = ServerTLS(settings, "mail.example.test")
    in_use = tls.options
    clock = Clock()
    watch = CertificateWatch(tls, clock=clock, threads=_Now(), run=_run)  # type: ignore[arg-type]
    errors: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") is LogLevel.error:
            errors.append(event.get("error", ""))

    globalLogPublisher.addObserver(observe)
    try:
        watch.startService()
        clock.advance(CHECK_INTERVAL)
        assert tls.options is in_use  # nothing changed
        _write(settings, second)
        os.utime(settings.cert, ns=(1, 1))  # a change the stamp sees even within one mtime tick
        clock.advance(CHECK_INTERVAL)
        assert tls.options is not in_use
        renewed = tls.options
        _write(settings, first, key=trustme.CA().issue_cert("x.test").private_key_pem.bytes())
        os.utime(settings.cert, ns=(2, 2))
        clock.advance(CHECK_INTERVAL)
        clock.advance(CHECK_INTERVAL)
        assert tls.options is renewed  # refused: the renewed one stays
        assert len(errors) == 1 and errors[0].startswith("tls.key: ") and "does not match" in errors[0]
        watch.check(True)  # SIGHUP asks again, and is told again
        assert len(errors) == 2
    finally:
        watch.stopService()
        globalLogPublisher.removeObserver(observe)
    assert not clock.getDelayedCalls()
