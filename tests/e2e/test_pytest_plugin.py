"""The pytest plugin, as an application's test suite uses it: a project outside this repository
whose tests know only the ``mailstack`` fixture (found through the installed entry point),
send with smtplib and read with imaplib. Its example is the one docs/testing.md shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SHARED = '''
import smtplib

def send(mailstack, subject):
    with smtplib.SMTP(*mailstack.smtp) as smtp:
        smtp.sendmail("app@example.org", ["bob@example.test"], f"Subject: {subject}\\r\\n\\r\\nx\\r\\n".encode())

def test_first(mailstack):
    mailstack.add_user("bob@example.test", "a long password")
    send(mailstack, "first")
    mailstack.wait_for_message(to="bob@example.test", subject="first")

def test_second_sees_the_same_server(mailstack):
    assert [m["Subject"] for m in mailstack.messages(to="bob@example.test")] == ["first"]
    mailstack.clear()
    assert mailstack.messages() == []
'''

ASYNC = '''
import asyncio, smtplib
import pytest

@pytest.mark.asyncio
async def test_an_async_test_awaits_its_mail(mailstack):
    mailstack.add_user("carol@example.test", "a long password")

    def send():
        with smtplib.SMTP(*mailstack.smtp) as smtp:
            smtp.sendmail("app@example.org", ["carol@example.test"], b"Subject: async\\r\\n\\r\\nx\\r\\n")

    await asyncio.get_running_loop().run_in_executor(None, send)
    message = await asyncio.to_thread(mailstack.wait_for_message, to="carol@example.test")
    assert message["Subject"] == "async"
'''

WAITS_IN_VAIN = '''
def test_a_mail_that_never_comes(mailstack):
    mailstack.wait_for_message(to="nobody@example.test", subject="never", timeout=0.3)
'''


def docs_example() -> str:
    text = (REPO / "docs" / "testing.md").read_text()
    found = re.search(r"```python\n(import imaplib.*?)```", text, re.S)
    assert found, "docs/testing.md lost its example"
    return found.group(1)


def run_project(root: Path, files: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "MAILSTACK_CONFIG")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=180)


def test_the_documented_example_passes_in_a_project_of_its_own(tmp_path):
    done = run_project(tmp_path / "app", {"pytest.ini": "[pytest]\n", "test_mail.py": docs_example()})
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr


def test_each_test_gets_a_fresh_server_by_default(tmp_path):
    done = run_project(tmp_path / "app", {"pytest.ini": "[pytest]\n", "test_mail.py": SHARED})
    assert done.returncode == 1 and "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
    assert "test_second_sees_the_same_server" in done.stdout


def test_a_wider_scope_from_the_ini_file_or_the_command_line_shares_one(tmp_path):
    ini = run_project(tmp_path / "ini", {"pytest.ini": "[pytest]\nmailstack_scope = module\n", "test_mail.py": SHARED})
    assert ini.returncode == 0 and "2 passed" in ini.stdout, ini.stdout + ini.stderr
    flag = run_project(tmp_path / "flag", {"pytest.ini": "[pytest]\n", "test_mail.py": SHARED},
                       "--mailstack-scope=session")
    assert flag.returncode == 0 and "2 passed" in flag.stdout, flag.stdout + flag.stderr


def test_a_message_that_never_comes_fails_the_test_and_says_so(tmp_path):
    done = run_project(tmp_path / "app", {"pytest.ini": "[pytest]\n", "test_mail.py": WAITS_IN_VAIN})
    assert done.returncode == 1 and "TimeoutError: no message for nobody@example.test" in done.stdout, done.stdout


def test_a_bad_scope_is_a_usage_error(tmp_path):
    done = run_project(tmp_path / "app", {"pytest.ini": "[pytest]\nmailstack_scope = forever\n",
                                          "test_mail.py": SHARED})
    assert done.returncode != 0 and "mailstack_scope = 'forever'" in done.stdout + done.stderr


def test_an_async_suite_under_pytest_asyncio_uses_it_too(tmp_path):
    done = run_project(tmp_path / "app", {"pytest.ini": "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n", "test_mail.py": ASYNC})
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr
