"""The fixture in a Django project's suite run by pytest-django: Django's own mail API, a test database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_django", reason="pytest-django comes with mailstack's test extra")

SETTINGS = """
SECRET_KEY = "only for the test"
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
USE_TZ = True
"""

TESTS = '''
import pytest
from django.contrib.auth.models import User
from django.core import mail


@pytest.fixture
def smtp_to_mailstack(mailstack, settings):
    # Django's test environment swaps in its in-memory backend: real SMTP is asked for here
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = mailstack.smtp
    return mailstack


def test_send_mail_reaches_a_local_user_and_an_outside_address_is_captured(smtp_to_mailstack):
    mailstack = smtp_to_mailstack
    mailstack.add_user("alice@example.test", "a long password")
    sent = mail.send_mail("Welcome", "Hello from Django", "app@example.org",
                          ["alice@example.test", "bob@elsewhere.example"])
    assert sent == 1
    assert mailstack.wait_for_message(to="alice@example.test")["Subject"] == "Welcome"
    outside = mailstack.wait_for_message(to="bob@elsewhere.example")
    assert outside.get_content().strip() == "Hello from Django"


@pytest.mark.django_db
def test_a_database_test_sends_mail_too(smtp_to_mailstack):
    mailstack = smtp_to_mailstack
    user = User.objects.create_user("carol", "carol@example.test", "x")
    mailstack.add_user(user.email, "a long password")
    mail.EmailMessage("Your account", f"Hello {user.username}", "app@example.org", [user.email]).send()
    assert mailstack.wait_for_message(to=user.email, subject="Your account").get_content().strip() == "Hello carol"
'''


def test_a_django_suite_uses_the_fixture(tmp_path: Path) -> None:
    (tmp_path / "settings.py").write_text(SETTINGS)
    (tmp_path / "test_mail.py").write_text(TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nDJANGO_SETTINGS_MODULE = settings\npythonpath = .\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "DJANGO_SETTINGS_MODULE")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pytest_django"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "2 passed" in output, output
