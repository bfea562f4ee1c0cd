"""Password logins for every server: SASL decoding, the cred checker, throttling.

SMTP AUTH (RFC 4954), POP3 USER/PASS and AUTH (RFC 1939, 5034) and IMAP LOGIN
and AUTHENTICATE (RFC 3501, 4959) all come through :class:`Authenticator`, so a
client address that fails on one protocol is slowed down on all of them. The
answer never says whether the user exists or the password was wrong.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mailstack import metrics
from mailstack.accounts.store import AccountError
from mailstack.throttle import AuthThrottle

log = Logger()


class SASLError(ValueError):
    """A malformed SASL response (bad base64, wrong field count)."""


def b64decode(text: str | bytes) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("invalid base64") from None


def decode_plain(response: bytes) -> tuple[str, str, str]:
    """RFC 4616 PLAIN message -> (authzid, authcid, password), UTF-8 decoded."""
    parts = response.split(b"\0")
    if len(parts) != 3:
        raise SASLError("PLAIN needs authzid NUL authcid NUL passwd")
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise SASLError("PLAIN fields must be UTF-8") from None
    if not authcid or not password:
        raise SASLError("empty user name or password")
    return authzid, authcid, password


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    LOCKED = "locked"  # too many failures from this address: refuse and disconnect
    UNAVAILABLE = "unavailable"  # the account store could not answer: a temporary failure
    MALFORMED = "malformed"  # a SASL PLAIN response that is not one (bad base64, wrong fields)


@dataclass(frozen=True, slots=True)
class LoginResult:
    outcome: Outcome
    user: str | None = None


class Authenticator:
    """Checks a user name and password through twisted.cred, with per-address throttling."""

    def __init__(self, checker: ICredentialsChecker, throttle: AuthThrottle, clock: IReactorTime) -> None:
        self.checker = checker
        self.throttle = throttle
        self.clock = clock

    def is_locked(self, ip: str) -> bool:
        return self.throttle.is_locked(ip)

    async def login_plain(self, ip: str, response: str | bytes, *, protocol: str = "",
                          session_id: str = "") -> LoginResult:
        """A SASL PLAIN response (base64 of RFC 4616's message) checked as :meth:`login` checks.

        MALFORMED when it is not PLAIN; FAILED for a proxy login (an authorization identity
        naming someone else), which is not offered.
        """
        try:
            authzid, authcid, password = decode_plain(b64decode(response))
        except SASLError:
            return LoginResult(Outcome.MALFORMED)
        if authzid and authzid != authcid:
            return LoginResult(Outcome.FAILED)
        return await self.login(ip, authcid, password, protocol=protocol, session_id=session_id)

    async def login(self, ip: str, username: str, password: str, *, protocol: str = "",
                    session_id: str = "") -> LoginResult:
        """Check a login; every outcome is logged with the protocol and the session's id."""
        if self.throttle.is_locked(ip):
            log.warn("{protocol} {session_id}: login refused for {ip}: locked out", protocol=protocol,
                     session_id=session_id, ip=ip)
            return LoginResult(Outcome.LOCKED)
        creds = UsernamePassword(username.encode("utf-8"), password.encode("utf-8"))
        started = self.clock.seconds()
        try:
            user = await self.checker.requestAvatarId(creds)
        except AccountError:
            log.failure("{protocol} {session_id}: login for {username!r}: account store unavailable",
                        protocol=protocol, session_id=session_id, username=username)
            return LoginResult(Outcome.UNAVAILABLE)
        except UnauthorizedLogin:
            was_locked = self.throttle.is_locked(ip)  # another attempt's failure may have locked it meanwhile
            delay = self.throttle.record_failure(ip)
            metrics.AUTH_FAILURES.labels(protocol).inc()
            if not was_locked and self.throttle.is_locked(ip):
                metrics.AUTH_LOCKOUTS.labels(protocol).inc()
            log.warn("{protocol} {session_id}: login failed for {username!r} from {ip}", protocol=protocol,
                     session_id=session_id, username=username, ip=ip)
            # The failure is answered ``delay`` after the attempt began, not after the check
            # ended: an unknown user, a wrong password and a hash made with other cost
            # parameters all take the same time, so timing does not tell which accounts exist.
            wait = max(0.0, started + delay - self.clock.seconds())
            await deferLater(self.clock, wait, lambda: None)
            if self.throttle.is_locked(ip):
                return LoginResult(Outcome.LOCKED)
            return LoginResult(Outcome.FAILED)
        self.throttle.record_success(ip)
        address = user.decode("utf-8") if isinstance(user, bytes) else str(user)
        log.info("{protocol} {session_id}: {user} logged in from {ip}", protocol=protocol, session_id=session_id,
                 user=address, ip=ip)
        return LoginResult(Outcome.OK, address)
