"""build_service: which listeners a config opens, where, and what they share.

The service is built with a MemoryReactorClock; starting a listener records
``listenTCP`` in ``reactor.tcpServers`` and opens no socket.
"""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailstack import config
from mailstack.imap.protocol import IMAPFactory
from mailstack.managesieve import ManageSieveFactory
from mailstack.pop3 import POP3Factory
from mailstack.service import build_service, listener_builders
from mailstack.smtp.protocol import SMTPFactory

PACKAGE = Path(__file__).resolve().parents[1] / "mailstack"

LISTEN = {
    "smtp": "127.0.0.1:2525",
    "submission": "127.0.0.1:5870",
    "submissions": "127.0.0.1:4650",
    "pop3": "127.0.0.1:1100",
    "pop3s": "127.0.0.1:9950",
    "imap": "[::1]:1430",
    "imaps": "127.0.0.1:9930",
    "managesieve": "127.0.0.1:41900",
}


def settings_for(root: Path, listen: dict[str, str]) -> config.Settings:
    lines = "\n".join(f'{name} = "{value}"' for name, value in listen.items())
    path = root / "mailstack.toml"
    path.write_text(f"""
hostname = "mail.example.test"
domains = ["example.test"]

[listen]
{lines}

[storage]
accounts = "var/accounts.sqlite3"
maildirs = "maildirs"
queue = "var/queue"

[tls]
cert = "var/tls/cert.pem"
key = "var/tls/key.pem"
self_signed = true
""")
    return config.load(path, base=root)


def start_listeners(root: Path, listen: dict[str, str]) -> tuple[MemoryReactorClock, dict[int, tuple[str, object]]]:
    """Build the whole service and start only its listeners; port -> (interface, factory)."""
    reactor = MemoryReactorClock()
    top = build_service(settings_for(root, listen), reactor)
    for name in listener_builders():
        try:
            top.getServiceNamed(name).startService()
        except KeyError:
            continue
    servers = {port: (interface, factory) for port, factory, _backlog, interface in reactor.tcpServers}
    assert len(servers) == len(reactor.tcpServers)  # one listener per port
    return reactor, servers


@pytest.fixture(scope="module")
def every_listener(tmp_path_factory):
    return start_listeners(tmp_path_factory.mktemp("service"), LISTEN)[1]


def unwrapped(factory):
    return factory.wrappedFactory if isinstance(factory, TLSMemoryBIOFactory) else factory


def test_every_configured_listener_listens_on_its_port_and_interface(every_listener):
    assert {port: interface for port, (interface, _) in every_listener.items()} == {
        2525: "127.0.0.1", 5870: "127.0.0.1", 4650: "127.0.0.1", 1100: "127.0.0.1", 9950: "127.0.0.1",
        1430: "::1", 9930: "127.0.0.1", 41900: "127.0.0.1"}


def test_each_port_gets_the_factory_of_its_protocol(every_listener):
    kinds = {port: type(unwrapped(factory)) for port, (_, factory) in every_listener.items()}
    assert kinds == {2525: SMTPFactory, 5870: SMTPFactory, 4650: SMTPFactory, 1100: POP3Factory,
                     9950: POP3Factory, 1430: IMAPFactory, 9930: IMAPFactory, 41900: ManageSieveFactory}
    roles = {port: unwrapped(f).role for port, (_, f) in every_listener.items() if port not in (1430, 9930)}
    assert roles == {2525: "smtp", 5870: "submission", 4650: "submissions", 1100: "pop3", 9950: "pop3s",
                     41900: "managesieve"}


def test_implicit_tls_ports_get_tls_wrapped_factories_and_the_others_do_not(every_listener):
    wrapped = {port for port, (_, factory) in every_listener.items() if isinstance(factory, TLSMemoryBIOFactory)}
    assert wrapped == {4650, 9950, 9930}  # 465, 995, 993 in production
    assert all(unwrapped(f).implicit_tls == (port in wrapped) for port, (_, f) in every_listener.items())


def test_an_empty_listen_entry_adds_no_listener(tmp_path):
    listen = dict(LISTEN, pop3="", imaps="", submission="")
    reactor, servers = start_listeners(tmp_path, listen)
    assert sorted(servers) == [1430, 2525, 4650, 9950, 41900]


def test_pop3_and_pop3s_share_one_maildrops_and_imap_and_imaps_one_mail_store(every_listener):
    pop3, pop3s = unwrapped(every_listener[1100][1]), unwrapped(every_listener[9950][1])
    assert pop3.make_session("192.0.2.1", False).maildrops is pop3s.make_session("192.0.2.1", True).maildrops
    imap, imaps = unwrapped(every_listener[1430][1]), unwrapped(every_listener[9930][1])
    sent: list[bytes] = []
    assert imap.make_session("192.0.2.1", False, sent.append).store is \
        imaps.make_session("192.0.2.1", True, sent.append).store


def test_every_smtp_role_hands_mail_to_the_one_router(every_listener):
    routers = {id(unwrapped(f).make_session("192.0.2.1", False, lambda: None, lambda: None).router)
               for port, (_, f) in every_listener.items() if port in (2525, 5870, 4650)}
    assert len(routers) == 1


def test_managesieve_logs_in_like_the_others_and_reaches_the_one_account_store(every_listener):
    sieve, pop3 = unwrapped(every_listener[41900][1]), unwrapped(every_listener[1100][1])
    session = sieve.make_session("192.0.2.1", False)
    assert session.authenticator is pop3.make_session("192.0.2.1", False).authenticator
    assert session.scripts.store is pop3.make_session("192.0.2.1", False).maildrops.store.accounts
    assert not sieve.implicit_tls


@pytest.mark.parametrize("package", ["smtp", "pop3", "imap", "maildir", "managesieve"])
def test_protocol_packages_never_import_the_composition_modules(package):
    # STYLE.md §2: only service.py knows every concrete class; no import cycle back into it.
    banned = {"mailstack.service", "mailstack.config", "mailstack.tap", "twisted.internet.reactor"}
    for path in sorted((PACKAGE / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            else:
                continue
            assert not names & banned, f"{path.relative_to(PACKAGE)} imports {names & banned}"


def test_the_folder_watcher_is_read_by_the_reactor_while_the_service_runs(tmp_path):
    import sys

    reactor = MemoryReactorClock()
    top = build_service(settings_for(tmp_path, {"imap": "127.0.0.1:1143"}), reactor)
    try:
        watcher = top.getServiceNamed("folder-watcher").watcher
    except KeyError:
        assert not sys.platform.startswith("linux"), "inotify is there on Linux"
        return
    service = top.getServiceNamed("folder-watcher")
    service.startService()
    assert watcher in reactor.getReaders()
    service.stopService()
    assert watcher not in reactor.getReaders() and watcher.fileno() == -1


def test_the_vacation_memory_is_closed_after_the_pools_when_the_service_stops(tmp_path):
    reactor = MemoryReactorClock()
    top = build_service(settings_for(tmp_path, {"imap": "127.0.0.1:1143"}), reactor)
    order = [service.name for service in top]
    assert order.index("vacation-memory") < order.index("threadpool-io")  # stopped in reverse: after it
    memory = top.getServiceNamed("vacation-memory")
    top.startService()
    assert memory.running
    top.stopService()
    assert not memory.running
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        memory.close.__self__.replied("alice@example.test", "h", "bob@example.org", 0.0)


def test_imap_and_pop3_share_the_watcher_of_the_one_mail_store(tmp_path):
    from mailstack.service import build_shared

    shared = build_shared(settings_for(tmp_path, {"imap": "127.0.0.1:1143"}), MemoryReactorClock())
    assert shared.mail_store.watcher is shared.watcher
    assert shared.maildrops.store is shared.mail_store


def test_an_srs_secret_that_cannot_be_made_stops_start_up_with_one_line_naming_the_key(tmp_path):
    import dataclasses

    import pytest

    from mailstack.errors import StartupError
    from mailstack.service import build_shared

    settings = settings_for(tmp_path, {"smtp": "127.0.0.1:2525"})
    (tmp_path / "blocker").write_text("a file, not a directory")
    storage = dataclasses.replace(settings.storage, srs_secret=tmp_path / "blocker" / "srs.key")
    with pytest.raises(StartupError) as failed:
        build_shared(dataclasses.replace(settings, storage=storage), MemoryReactorClock())
    assert str(failed.value).startswith("storage.srs_secret: cannot read or create ")
    assert "\n" not in str(failed.value)


def test_a_maildir_root_the_server_cannot_use_stops_start_up_with_one_line(tmp_path, monkeypatch):
    import os

    import pytest

    from mailstack.errors import StartupError
    from mailstack.service import build_shared

    settings = settings_for(tmp_path, {"smtp": "127.0.0.1:2525"})
    real_access = os.access
    maildirs = settings.storage.maildirs

    def access(path, mode, **kw):  # as for a folder of another user (root may use any)
        return False if str(path) == str(maildirs) else real_access(path, mode, **kw)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(StartupError) as failed:
        build_shared(settings, MemoryReactorClock())
    assert str(failed.value) == (f"storage.maildirs: {maildirs} is not readable and writable by this user "
                                 f"(uid {os.geteuid()})")


def test_the_submission_ports_have_their_own_recipient_cap_and_port_25_keeps_the_general_one(tmp_path):
    import dataclasses

    from mailstack.service import smtp_config

    settings = settings_for(tmp_path, {"smtp": "127.0.0.1:2525"})
    capped = dataclasses.replace(settings, limits=dataclasses.replace(settings.limits, send_recipients=10))
    assert smtp_config(capped, implicit_tls=False, submission=True).max_recipients == 10
    assert smtp_config(capped, implicit_tls=False).max_recipients == settings.limits.recipients == 100
    assert smtp_config(settings, implicit_tls=True, submission=True).max_recipients == 100  # 0: the general one


def test_a_ca_file_that_does_not_load_stops_start_up_with_one_line_naming_the_key(tmp_path):
    import dataclasses

    import pytest

    from mailstack.errors import StartupError
    from mailstack.service import build_shared

    settings = settings_for(tmp_path, {"smtp": "127.0.0.1:2525"})
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    for path in (tmp_path / "ca.pem", tmp_path / "missing.pem"):
        relay = dataclasses.replace(settings.relay, ca_file=str(path))
        with pytest.raises(StartupError) as failed:
            build_shared(dataclasses.replace(settings, relay=relay), MemoryReactorClock())
        assert str(failed.value).startswith(f"relay.ca_file: cannot load {path}: ")
        assert "\n" not in str(failed.value)
