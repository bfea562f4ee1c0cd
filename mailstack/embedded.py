"""The whole mail system inside another program's process, for its tests: :class:`MailServer`.

A :class:`MailServer` runs the real service tree (the one ``twistd mailstack`` runs:
SMTP on port 25's role, submission, POP3 and IMAP, with and without implicit TLS) on
free loopback ports, on Twisted's reactor in a background thread, so the program
using it needs to know nothing of Twisted. Its files live in a temporary directory,
removed by :meth:`MailServer.stop`; the TLS certificate comes from a throwaway CA
made at start, which :meth:`MailServer.ssl_context` trusts.

Every method is synchronous and may be called from any thread but the reactor's
(there it raises RuntimeError: it would wait on the thread it blocks). Users are added
to the account store the server reads (as ``mailstack user add`` does); messages are
read from the Maildirs, parsed into :class:`email.message.EmailMessage`.

    with MailServer() as mail:
        mail.add_user("alice@example.test", "secret password")
        smtplib.SMTP(*mail.smtp).sendmail("app@example.org", ["alice@example.test"], b"Subject: hi\\r\\n\\r\\nhello")
        assert mail.wait_for_message(to="alice@example.test", subject="hi")["Subject"] == "hi"

The reactor is the global one, ``twisted.internet.reactor``: Twisted reaches for it
where no caller can hand it another (``task.cooperate``, which a TLS connection uses to
pull from a non-streaming producer, as POP3 sends a large message; the TCP retry of a
truncated DNS answer in ``twisted.names``), so a private reactor would leave those
waiting for ever. While at least one server is up, the global reactor runs in one
daemon thread, ``mailstack-reactor``, which every server of the process shares:

* none is installed: the first start installs one (epoll where the system has it) and
  runs it; the last stop stops it, closes its files and uninstalls it, so that the
  next start installs a fresh one (a stopped reactor cannot run again);
* one is installed and already running (the program runs Twisted itself, in another
  thread): the servers use it and never stop it;
* one is installed but not running: it is run, stopped and uninstalled as if a server
  had installed it. A program that runs the reactor itself must therefore start it
  before the first server.

The pytest plugin (:mod:`mailstack.pytest_plugin`) hands one out as the ``mailstack``
fixture.
"""

from __future__ import annotations

import contextlib
import datetime
import email
import email.policy
import ipaddress
import re
import shutil
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from mailstack.config import Settings

LISTENERS = ("smtp", "submission", "submissions", "pop3", "pop3s", "imap", "imaps")
HOST = "127.0.0.1"


class Endpoint(NamedTuple):
    """Where one listener is: ``smtplib.SMTP(*mail.smtp)`` connects to it."""

    host: str
    port: int


def _endpoint(name: str, doc: str) -> Any:
    return property(lambda self: self.endpoints[name], doc=doc)


class MailServer:
    """mailstack on free loopback ports, in a thread of this process; see the module docstring.

    ``domains`` are local from the start (a user's domain is added with the user);
    ``settings`` are more configuration keys, as in ``mailstack.toml``
    (``{"tls": {"allow_plaintext_auth": True}}``), over the defaults made here.
    ``root`` keeps the files in a directory of the caller's, left in place at stop.
    """

    def __init__(self, domains: Iterable[str] = ("example.test",), *, hostname: str = "mail.example.test",
                 settings: Mapping[str, Any] | None = None, root: Path | str | None = None) -> None:
        self.domains = tuple(domains)
        self.hostname = hostname
        self.extra = dict(settings or {})
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path()  # a temporary one is made at start
        self.endpoints: dict[str, Endpoint] = {}
        self._reactor: Any = None  # the global reactor, while this server runs on it
        self._service: Any = None
        self._store: Any = None
        self._capture = ""  # the capture mailbox, when mail for other domains is captured
        self._lock = threading.Lock()

    # -- endpoints ------------------------------------------------------------------

    smtp = _endpoint("smtp", "Port 25's role: mail for local users without AUTH (other domains' is held).")
    submission = _endpoint("submission", "Port 587's role: STARTTLS, then AUTH.")
    submissions = _endpoint("submissions", "Port 465's role: implicit TLS, then AUTH.")
    imap = _endpoint("imap", "IMAP with STARTTLS.")
    imaps = _endpoint("imaps", "IMAP with implicit TLS.")
    pop3 = _endpoint("pop3", "POP3 with STLS.")
    pop3s = _endpoint("pop3s", "POP3 with implicit TLS.")
    http = _endpoint("http", "The HTTP API and page of captured mail (``http://host:port/``).")

    @property
    def ca_file(self) -> Path:
        """The throwaway CA's certificate (PEM), for clients that take a file."""
        return self.root / "tls" / "ca.pem"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's certificate (its names: ``hostname``,
        localhost and 127.0.0.1) and nothing else."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    # -- running ----------------------------------------------------------------------

    def start(self) -> MailServer:
        """Listen on every port and serve; returns once each port is open."""
        from twisted.internet.threads import blockingCallFromThread

        from mailstack import config
        from mailstack.accounts.sqlite import SQLiteAccountStore
        from mailstack.service import build_service

        _refuse_on_reactor_thread("start")
        if self._service is not None:
            raise RuntimeError("the mail server is already running")
        with contextlib.ExitStack() as undo:  # what did start is undone if a later step fails
            if self._own_root:
                self.root = Path(tempfile.mkdtemp(prefix="mailstack-"))
                undo.callback(self._remove_root)
            settings = config.from_mapping(self._raw_settings(), self.root)
            _write_tls(self.root / "tls", self.hostname)
            reactor = _GLOBAL_REACTOR.acquire()
            undo.callback(_GLOBAL_REACTOR.release)
            # the reactor runs: the tree is built, started and asked for its ports on its thread
            service = blockingCallFromThread(reactor, build_service, settings, reactor)
            undo.callback(_stop_tree, reactor, service)
            blockingCallFromThread(reactor, service.startService)
            endpoints = blockingCallFromThread(reactor, _bound_ports, service, settings)
            store = SQLiteAccountStore(settings.storage.accounts,
                                       recipient_delimiter=settings.delivery.recipient_delimiter)
            undo.pop_all()
        self._reactor, self._service, self._store, self.endpoints = reactor, service, store, endpoints
        self._capture = settings.relay.capture_mailbox if settings.relay.capture else ""
        return self

    def _raw_settings(self) -> dict[str, Any]:
        """The configuration, as ``mailstack.toml`` would hold it: the defaults here, then ``settings``."""
        raw: dict[str, Any] = {
            "hostname": self.hostname,
            "domains": list(self.domains),
            "listen": {name: f"{HOST}:0" if name in LISTENERS else "" for name in (*LISTENERS, "managesieve")}
            | {"http": f"{HOST}:0"},
            "storage": {"accounts": "var/accounts.sqlite3", "maildirs": "maildirs", "queue": "var/queue",
                        "dkim": "var/dkim", "srs_secret": "var/srs.key", "vacation": "var/vacation.sqlite3"},
            "tls": {"cert": "tls/cert.pem", "key": "tls/key.pem", "self_signed": False},
            # the tests' own mail from loopback: not checked for SPF/DKIM/DMARC (no DNS waited on);
            # mail for other domains never leaves: it is captured (capture@ the first domain)
            "relay": {"networks": ["127.0.0.0/8", "::1/128"], "capture": True,
                      "mx_networks": ["127.0.0.0/8", "::1/128"]},  # other test servers, when not captured
            "log": {"format": "json", "path": "mailstack.log"},
            # a suite that tries wrong passwords on purpose is never locked out, and each failure
            # is forgotten at once, so it is answered after the throttle's first, shortest delay
            "limits": {"auth_failures": 1_000_000, "auth_lockout": "0.001s"},
        }
        for section, values in self.extra.items():
            if isinstance(values, Mapping) and isinstance(raw.get(section), dict):
                raw[section] = {**raw[section], **values}
            else:
                raw[section] = values
        return raw

    def stop(self) -> None:
        """Stop serving (sessions are closed as at a shutdown), close every file and remove the
        temporary directory; the last server to stop stops the reactor it runs."""
        _refuse_on_reactor_thread("stop")
        with self._lock:
            reactor, service = self._reactor, self._service
            if service is None:
                return
            self._reactor = self._service = None
        try:
            _stop_tree(reactor, service)
        finally:
            _GLOBAL_REACTOR.release()
            self._close_files()
            self._remove_root()

    def _remove_root(self) -> None:
        if self._own_root and self.root != Path():
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = Path()

    def _close_files(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> MailServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- accounts ---------------------------------------------------------------------

    def add_user(self, address: str, password: str) -> None:
        """A mailbox that can log in everywhere; its domain becomes local if it was not."""
        _refuse_on_reactor_thread("add_user")
        store = self._running_store()
        domain = address.rpartition("@")[2]
        with self._lock:
            store.ensure_domains([domain])
            if store.get_user(address) is not None:  # a server shared by several tests: the new password
                store.set_password(address, password)
            else:
                store.add_user(address, password)

    def _running_store(self) -> Any:
        if self._store is None:
            raise RuntimeError("the mail server is not running")
        return self._store

    # -- messages -----------------------------------------------------------------------

    def messages(self, to: str | None = None) -> list[EmailMessage]:
        """The messages delivered so far, oldest first: those of the mailbox *to* leads to (an
        alias or ``user+tag`` is followed), or of every mailbox, in every folder. For an
        address of another domain, the messages captured on their way to it (each copy in
        the capture mailbox names its envelope recipients in ``X-Original-To``)."""
        _refuse_on_reactor_thread("messages")
        return [message for _, message in self._messages(to)]

    def wait_for_message(self, to: str | None = None, subject: str | None = None,
                         timeout: float = 10.0) -> EmailMessage:
        """The first message for *to* whose Subject contains *subject*, waiting up to *timeout*
        seconds for it to arrive; TimeoutError names what did arrive."""
        _refuse_on_reactor_thread("wait_for_message")
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(to)
            for message in found:
                if subject is None or subject in str(message.get("Subject", "")):
                    return message
            if time.monotonic() >= deadline:
                subjects = ", ".join(repr(str(m.get("Subject", ""))) for m in found) or "none"
                raise TimeoutError(f"no message{f' for {to}' if to else ''}"
                                   f"{f' with a subject holding {subject!r}' if subject is not None else ''}"
                                   f" within {timeout:g} s (there: {subjects})")
            time.sleep(0.02)

    def clear(self) -> None:
        """Remove every delivered message from every mailbox (IMAP and POP3 sessions see them
        expunged). Users stay."""
        _refuse_on_reactor_thread("clear")
        for _ in range(20):  # a client changing flags renames files meanwhile: again until none is left
            paths = self._message_files(None)
            if not paths:
                return
            for path in paths:
                path.unlink(missing_ok=True)

    def _messages(self, to: str | None) -> list[tuple[Path, EmailMessage]]:
        outside = self._outside(to)
        for _ in range(20):
            out = []
            moved = False
            for path in self._message_files(self._capture if outside else to):
                try:
                    data = path.read_bytes()
                except FileNotFoundError:  # renamed by a client meanwhile (flags, new/ to cur/), or cleared
                    moved = True
                    break
                message = email.message_from_bytes(data, policy=email.policy.default)
                if outside is None or outside in _envelope_recipients(message):
                    out.append((path, message))
            if not moved:
                break
        return out  # type: ignore[return-value]

    def _outside(self, to: str | None) -> str | None:
        """*to*, lower-cased, when it is an address of another domain whose mail is captured."""
        if to is None or not self._capture:
            return None
        store = self._running_store()
        if store.is_local_domain(to.rpartition("@")[2].lower()):
            return None
        return to.lower()

    def _message_files(self, to: str | None) -> list[Path]:
        self._running_store()
        maildirs = self.root / "maildirs"
        if to is None:
            boxes = [box for domain in _subdirs(maildirs) for box in _subdirs(domain)]
        else:
            store = self._running_store()
            boxes = []
            for mailbox in store.resolve(to) or (to,):
                local, _, domain = mailbox.rpartition("@")
                box = maildirs / domain.lower() / local
                if box.resolve().parent.parent == maildirs.resolve():  # never outside the root
                    boxes.append(box)
        files: list[tuple[int, int, int, str, Path]] = []
        for rank, box in enumerate(boxes):
            folders = [box] + sorted(p for p in _subdirs(box) if p.name.startswith("."))
            for folder in folders:
                for sub in ("new", "cur"):
                    try:
                        entries = list((folder / sub).iterdir())
                    except OSError:
                        continue
                    for entry in entries:
                        found = _DELIVERED.match(entry.name)  # "seconds.Mmicroseconds...": delivery order
                        seconds, micros = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
                        files.append((seconds, micros, rank, entry.name, entry))
        return [path for *_, path in sorted(files)]


_DELIVERED = re.compile(r"(\d+)\.M(\d+)")


def _envelope_recipients(message: EmailMessage) -> set[str]:
    value = str(message.get("X-Original-To", ""))
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir())
    except OSError:
        return []


def _stop_tree(reactor: Any, service: Any) -> None:
    """Stop the service tree (the children that did start), waiting on the reactor's thread."""
    from twisted.internet.threads import blockingCallFromThread

    if reactor.running:  # else the program stopped its own reactor: nothing runs any more
        blockingCallFromThread(reactor, service.stopService)


def _bound_ports(service: Any, settings: Settings) -> dict[str, Endpoint]:
    found = {name: Endpoint(HOST, service.getServiceNamed(name).bound_port()) for name in LISTENERS
             if getattr(settings.listen, name) is not None}  # None: turned off by the settings
    if settings.listen.http is not None:
        found["http"] = Endpoint(HOST, service.getServiceNamed("web").getServiceNamed("http").bound_port())
    return found


class _GlobalReactor:
    """Twisted's global reactor, kept running while any :class:`MailServer` holds it (the
    module docstring tells which reactor that is and who stops it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._reactor: Any = None
        self.thread: threading.Thread | None = None  # the thread that runs it, when it is this module's

    def acquire(self) -> Any:
        """The running global reactor, installed and started first if no server holds it yet."""
        with self._lock:
            if self._holders == 0:
                self._reactor, self.thread = _run_global_reactor()
            self._holders += 1
            return self._reactor

    def release(self) -> None:
        """One holder less; the last stops the reactor if this module runs it."""
        with self._lock:
            self._holders -= 1
            if self._holders > 0:
                return
            reactor, thread = self._reactor, self.thread
            self._reactor = self.thread = None
            if thread is not None:
                _stop_global_reactor(reactor, thread)


_GLOBAL_REACTOR = _GlobalReactor()  # one per process, as the global reactor is


def _run_global_reactor() -> tuple[Any, threading.Thread | None]:
    """The global reactor, running, and the thread this module runs it in (None when the
    program runs it)."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        reactor = _install_reactor()
    elif reactor.running:
        return reactor, None
    running = threading.Event()
    refused: list[Exception] = []
    reactor.callWhenRunning(running.set)
    thread = threading.Thread(target=_run, args=(reactor, running, refused), name="mailstack-reactor", daemon=True)
    thread.start()
    running.wait()
    if refused:
        thread.join()
        raise RuntimeError("Twisted's global reactor is installed but cannot be run "
                           f"({type(refused[0]).__name__}): was it stopped?") from refused[0]
    return reactor, thread


def _run(reactor: Any, running: threading.Event, refused: list[Exception]) -> None:
    from twisted.internet.error import ReactorAlreadyRunning, ReactorNotRestartable

    try:
        reactor.run(installSignalHandlers=False)
    except (ReactorAlreadyRunning, ReactorNotRestartable) as e:
        refused.append(e)
    finally:
        running.set()  # also when run() returned or failed before the reactor ran


def _install_reactor() -> Any:
    try:
        from twisted.internet import epollreactor

        epollreactor.install()
    except ImportError:  # not Linux
        from twisted.internet import default

        default.install()
    return sys.modules["twisted.internet.reactor"]


def _stop_global_reactor(reactor: Any, thread: threading.Thread) -> None:
    """Stop the reactor this module runs, join its thread, close its files and uninstall it:
    the next server installs a fresh one."""
    import twisted.internet
    from twisted.python import threadable

    reactor.callFromThread(reactor.stop)
    thread.join(30)
    _close_reactor(reactor)
    if sys.modules.get("twisted.internet.reactor") is reactor:
        del sys.modules["twisted.internet.reactor"]
    if getattr(twisted.internet, "reactor", None) is reactor:
        del twisted.internet.reactor
    if threadable.ioThread == thread.ident:  # the stopped thread no longer runs a reactor
        threadable.ioThread = None


def _on_reactor_thread() -> bool:
    """Whether the caller is the thread that runs the global reactor."""
    if threading.current_thread() is _GLOBAL_REACTOR.thread:
        return True
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not getattr(reactor, "running", False):
        return False
    from twisted.python import threadable

    return threadable.isInIOThread()


def _refuse_on_reactor_thread(method: str) -> None:
    if _on_reactor_thread():
        raise RuntimeError(f"MailServer.{method}() blocks, so it cannot be called on the thread that runs "
                           "Twisted's reactor (the server runs there too); call it from another thread "
                           "(in Twisted code: deferToThread)")


def _close_reactor(reactor: Any) -> None:
    """Close what a stopped reactor holds open (its waker's pipe, the poll file)."""
    waker = getattr(reactor, "waker", None)
    if waker is not None:
        try:
            reactor.removeReader(waker)
        except Exception:
            pass
        waker.connectionLost(None)
    poller = getattr(reactor, "_poller", None)
    if poller is not None and hasattr(poller, "close"):
        poller.close()


def _write_tls(directory: Path, hostname: str, addresses: Iterable[str] = ()) -> None:
    """A throwaway CA and a certificate it signs for *hostname*, localhost, 127.0.0.1 and the
    IP *addresses*."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailstack test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    ips = dict.fromkeys(ipaddress.ip_address(address) for address in (HOST, *addresses))
    names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost"),
                                     *(x509.IPAddress(ip) for ip in ips)]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "cert.pem").write_bytes(cert.public_bytes(pem))
    key_path = directory / "key.pem"
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


__all__ = ["Endpoint", "MailServer"]
