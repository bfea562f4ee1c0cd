"""The pytest plugin as a project that installs the built wheel gets it: mailstack comes only
from ``pip wheel`` of this repository (never from its editable install), the ``pytest11`` entry
point in the wheel's metadata brings the ``mailstack`` fixture, and a project whose tests import
nothing of mailstack submits with STARTTLS and AUTH, reads back over IMAPS and waits for mail.

The new virtualenv borrows the running one's third-party packages (Twisted, pytest, ...) through
a ``.pth`` line, so nothing is downloaded for it; what it borrows is a directory of symlinks that
leaves out every trace of the installed mailstack (package, dist-info, editable finder, twistd
plugin), because a ``.pth`` line cannot hide part of a directory and a second mailstack dist-info
would be a second ``pytest11`` entry point, one that does not come from the wheel.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
# What the build reads: the packages of [tool.setuptools] packages.find, the metadata files,
# and the license files setuptools picks up by default.
SOURCE_DIRS = ("mailstack", "twisted")
SOURCE_FILES = ("pyproject.toml", "README.md")
LICENSE_GLOBS = ("LICEN[CS]E*", "COPYING*", "NOTICE*", "AUTHORS*")
NOT_SOURCE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "dropin.cache")

PASSWORD = "a long password"

PROBE = """
import importlib.metadata as md, json, os, sys
import mailstack, mailstack.pytest_plugin, twisted.plugins, twisted.plugins.mailstack_plugin
plugins = [ep for ep in md.entry_points(group="pytest11") if ep.name == "mailstack"]
print(json.dumps({
    "mailstack": mailstack.__file__,
    "pytest_plugin": mailstack.pytest_plugin.__file__,
    "twistd_plugin": twisted.plugins.mailstack_plugin.__file__,
    "entry_points": [[ep.value, str(ep.dist.locate_file(""))] for ep in plugins],
    "distributions": [str(d.locate_file("")) for d in md.distributions() if d.metadata["Name"] == "mailstack"],
    "sys_path": [os.path.abspath(p) for p in sys.path],
    "plugin_path": [p for p in twisted.plugins.__path__ if os.path.isdir(p)],
}))
"""

APP_TESTS = f'''
import imaplib
import smtplib
import urllib.request
from email.message import EmailMessage

PASSWORD = "{PASSWORD}"


def message(sender, to, subject, body):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content(body)
    return msg


def test_submitted_mail_is_read_back_over_imaps(mailstack):
    mailstack.add_user("alice@example.test", PASSWORD)
    with smtplib.SMTP(*mailstack.submission, timeout=10) as smtp:
        smtp.starttls(context=mailstack.ssl_context())
        smtp.login("alice@example.test", PASSWORD)
        smtp.send_message(message("alice@example.test", "alice@example.test", "From the wheel", "Hello Alice"))
    mailstack.wait_for_message(to="alice@example.test", subject="From the wheel")  # delivery follows the 250
    with imaplib.IMAP4_SSL(*mailstack.imaps, ssl_context=mailstack.ssl_context(), timeout=10) as imap:
        imap.login("alice@example.test", PASSWORD)
        assert imap.select("INBOX") == ("OK", [b"1"])
        typ, data = imap.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)] BODY[TEXT])")
    assert typ == "OK"
    assert data[0][1].strip() == b"Subject: From the wheel"
    assert data[1][1].strip() == b"Hello Alice"


def test_wait_for_message_returns_the_one_asked_for(mailstack):
    mailstack.add_user("bob@example.test", PASSWORD)
    with smtplib.SMTP(*mailstack.smtp, timeout=10) as smtp:
        for subject in ("First", "Second"):
            smtp.send_message(message("app@example.org", "bob@example.test", subject, f"{{subject}} body"))
    received = mailstack.wait_for_message(to="bob@example.test", subject="Second")
    assert received["Subject"] == "Second"
    assert received.get_content().strip() == "Second body"


def test_mail_for_another_domain_is_captured_and_the_page_is_served(mailstack):
    with smtplib.SMTP(*mailstack.smtp, timeout=10) as smtp:
        smtp.send_message(message("app@example.org", "someone@elsewhere.example", "Outbound", "x"))
    captured = mailstack.wait_for_message(to="someone@elsewhere.example", subject="Outbound")
    assert captured["X-Original-To"] == "someone@elsewhere.example"
    with urllib.request.urlopen("http://{{}}:{{}}/".format(*mailstack.http), timeout=10) as page:
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert b"<html" in page.read()
'''


@dataclass(frozen=True)
class Wheel:
    path: Path
    seconds: float


@dataclass(frozen=True)
class WheelEnv:
    root: Path
    python: Path
    site: Path
    borrowed: Path


def clean_env() -> dict[str, str]:
    """This process's environment without what would point a child at the repository's mailstack
    or change how pytest loads plugins; bytecode is not written, so the symlinked packages stay as they are."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
            "MAILSTACK_CONFIG", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}


def run(command: list[str | Path], *, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def build_isolation_flags(pyproject: Path) -> list[str]:
    """``--no-build-isolation`` when this environment already meets the build-system requirements
    (no network needed); otherwise pip builds in an isolated environment it installs."""
    requires = tomllib.loads(pyproject.read_text())["build-system"]["requires"]
    for text in requires:
        requirement = Requirement(text)
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            return []
        if not requirement.specifier.contains(version, prereleases=True):
            return []
    return ["--no-build-isolation"]


def copy_source(into: Path) -> Path:
    """The files the build reads, copied, so that its build/ and egg-info land here and not in the repository."""
    into.mkdir()
    for name in SOURCE_DIRS:
        shutil.copytree(REPO / name, into / name, ignore=NOT_SOURCE)
    for name in SOURCE_FILES:
        shutil.copy2(REPO / name, into / name)
    for pattern in LICENSE_GLOBS:
        for path in REPO.glob(pattern):
            shutil.copy2(path, into / path.name)
    return into


def is_mailstack_install(name: str) -> bool:
    lowered = name.lower()
    return lowered.startswith(("mailstack", "__editable__")) or lowered.endswith((".pth", ".egg-link"))


def link_children(source: Path, into: Path, skip: set[str]) -> None:
    into.mkdir()
    for child in source.iterdir():
        if child.name not in skip:
            (into / child.name).symlink_to(child)


def borrow_site_packages(into: Path) -> Path:
    """Symlinks to the running environment's site-packages, less mailstack's package, dist-info,
    editable finder and ``.pth`` files. ``twisted/plugins`` is a real directory, without
    mailstack's twistd plugin and without a ``dropin.cache``, so a plugin scan writes its cache here."""
    into.mkdir()
    sites = dict.fromkeys(Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib"))
    for site in sites:
        for child in site.iterdir():
            if is_mailstack_install(child.name) or os.path.lexists(into / child.name):
                continue
            if child.name == "twisted":
                link_children(child, into / "twisted", skip={"plugins"})
                link_children(child / "plugins", into / "twisted" / "plugins",
                              skip={"mailstack_plugin.py", "dropin.cache"})
            else:
                (into / child.name).symlink_to(child)
    return into


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    """The mailstack wheel, built once from a copy of the working tree."""
    root = tmp_path_factory.mktemp("wheel")
    source = copy_source(root / "source")
    isolation = build_isolation_flags(source / "pyproject.toml")
    started = time.monotonic()
    done = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", root / "dist", source],
               cwd=root, timeout=300)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    [built] = (root / "dist").glob("mailstack-*.whl")
    return Wheel(built, seconds)


@pytest.fixture(scope="module")
def wheel_env(wheel: Wheel, tmp_path_factory: pytest.TempPathFactory) -> WheelEnv:
    """A new virtualenv with mailstack installed from the wheel alone and everything else borrowed."""
    root = tmp_path_factory.mktemp("wheel-env")
    made = run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], cwd=root)
    assert made.returncode == 0, made.stdout + made.stderr
    python = root / "venv" / "bin" / "python"
    found = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    assert found.returncode == 0, found.stderr
    site = Path(found.stdout.strip())
    installed = run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
                     wheel.path], cwd=root)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    borrowed = borrow_site_packages(root / "borrowed")
    (site / "borrowed.pth").write_text(f"{borrowed}\n")
    return WheelEnv(root, python, site, borrowed)


def test_the_new_environment_has_mailstack_and_its_entry_point_only_from_the_wheel(wheel_env: WheelEnv) -> None:
    probe = run([wheel_env.python, "-c", PROBE], cwd=wheel_env.root)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    found = json.loads(probe.stdout)
    site = wheel_env.site
    for key in ("mailstack", "pytest_plugin", "twistd_plugin"):
        assert Path(found[key]).is_relative_to(site), (key, found[key])
    assert found["entry_points"] == [["mailstack.pytest_plugin", str(site)]]
    assert found["distributions"] == [str(site)]
    outer = Path(sysconfig.get_paths()["purelib"])
    for path in found["sys_path"] + found["plugin_path"]:
        assert not Path(path).resolve().is_relative_to(REPO), path
        assert not Path(path).is_relative_to(outer), path
    # twistd's plugin scan writes dropin.cache into these: both are in the temporary directory
    assert set(found["plugin_path"]) == {str(site / "twisted" / "plugins"),
                                         str(wheel_env.borrowed / "twisted" / "plugins")}


def test_a_project_that_installs_the_wheel_gets_the_fixture(wheel: Wheel, wheel_env: WheelEnv,
                                                            tmp_path: Path) -> None:
    project = tmp_path / "app"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_app.py").write_text(APP_TESTS)
    done = run([wheel_env.python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project)
    output = f"wheel built in {wheel.seconds:.1f} s\n{done.stdout}{done.stderr}"
    assert done.returncode == 0, output
    assert "3 passed" in done.stdout, output
