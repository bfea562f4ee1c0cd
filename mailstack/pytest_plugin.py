"""The pytest plugin: a real mail server for a test suite, as the ``mailstack`` fixture.

Installed with mailstack (the ``pytest11`` entry point), so a test asks for it by name:

    def test_signup_mail(mailstack):
        mailstack.add_user("alice@example.test", "a long password")
        my_app.sign_up("alice@example.test", smtp=mailstack.smtp)
        message = mailstack.wait_for_message(to="alice@example.test", subject="Welcome")

The fixture is a started :class:`mailstack.embedded.MailServer`: SMTP, submission, IMAP
and POP3 (with their implicit-TLS ports) on free loopback ports, a throwaway CA that
``mailstack.ssl_context()`` trusts, and its files in a temporary directory that is
removed afterwards. Nothing of Twisted shows: the server runs Twisted's reactor in a
background thread while it is up (or uses the one the program already runs), and the
fixture's calls are synchronous and thread-safe, so it works under plain pytest,
pytest-asyncio and pytest-django alike.

Its scope is ``function`` (a fresh server per test) unless ``mailstack_scope`` in the
pytest ini file or ``--mailstack-scope`` says ``module``, ``package`` or ``session``
(then ``mailstack.clear()`` empties the mailboxes between tests). More settings go in a
``mailstack_settings`` fixture the suite overrides: a mapping of configuration sections,
as in ``mailstack.toml``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

SCOPES = ("function", "class", "module", "package", "session")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mailstack", "a real mail server for the tests (mailstack)")
    group.addoption("--mailstack-scope", choices=SCOPES, default=None,
                    help="how long one mailstack fixture lives (default: the mailstack_scope ini value, else function)")
    parser.addini("mailstack_scope", "how long one mailstack fixture lives: function, class, module, package, session",
                  default="function")


def _scope(fixture_name: str, config: pytest.Config) -> Any:
    scope = config.getoption("--mailstack-scope") or config.getini("mailstack_scope") or "function"
    if scope not in SCOPES:
        raise pytest.UsageError(f"mailstack_scope = {scope!r}: expected one of {', '.join(SCOPES)}")
    return str(scope)


@pytest.fixture(scope="session")
def mailstack_settings() -> Mapping[str, Any]:
    """More configuration for the ``mailstack`` fixture, section by section as in
    ``mailstack.toml`` (``{"tls": {"allow_plaintext_auth": True}}``); override it in a conftest."""
    return {}


@pytest.fixture(scope=_scope)
def mailstack(mailstack_settings: Mapping[str, Any]) -> Iterator[Any]:
    """A running mailstack: endpoints, ``add_user``, ``messages``, ``wait_for_message``, ``clear``."""
    from mailstack.embedded import MailServer

    server = MailServer(settings=mailstack_settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()
