"""Maildir paths and their creation (mailstack.maildir.layout): no way out of root."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.addresses import InvalidAddress
from mailstack.maildir import (
    DeliveryError,
    InvalidFolder,
    MaildirDelivery,
    MaildirLayout,
)

TRAVERSAL_ADDRESSES = [
    "../x@d.test",
    "a/b@d.test",
    "x@../d",
    "x@d/e",
    "x@d.test/..",
    "x\x00@d.test",
    "x@d.test\x00",
    "..@d.test",
    ".x@d.test",
    "x@..",
    "x@.",
    "x@d..test",
    "a\\b@d.test",
    "x@d\\e",
    "x\u0085@d.test",  # C1 control
    "x@d\u2028e.test",  # line separator
    "",
    "@d.test",
    "x@",
]

TRAVERSAL_FOLDERS = [
    "../../etc",
    "..",
    "a/b",
    "/etc",
    ".Sent",
    "Sent.",
    "a..b",
    "",
    "x\x00",
    "x\ny",
    "a\\b",
    "x" * 255,
]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def layout(tmp_path: Path) -> MaildirLayout:
    return MaildirLayout(tmp_path / "maildirs")


def test_mailbox_path_is_root_domain_local_in_canonical_case(
    layout: MaildirLayout,
) -> None:
    assert (
        layout.maildir_path("Bob@Example.TEST") == layout.root / "example.test" / "bob"
    )


def test_folder_path_is_dot_folder_inside_the_mailbox(layout: MaildirLayout) -> None:
    mailbox = layout.root / "d.test" / "x"
    assert layout.maildir_path("x@d.test", "Sent") == mailbox / ".Sent"
    assert layout.maildir_path("x@d.test", "Archive.2024") == mailbox / ".Archive.2024"
    assert layout.maildir_path("x@d.test", "INBOX") == mailbox


@pytest.mark.parametrize("address", TRAVERSAL_ADDRESSES)
def test_traversal_addresses_are_refused(layout: MaildirLayout, address: str) -> None:
    with pytest.raises(InvalidAddress):
        layout.maildir_path(address)


@pytest.mark.parametrize("folder", TRAVERSAL_FOLDERS)
def test_traversal_folders_are_refused(layout: MaildirLayout, folder: str) -> None:
    with pytest.raises(InvalidFolder):
        layout.maildir_path("x@d.test", folder)


@pytest.mark.parametrize("address", TRAVERSAL_ADDRESSES)
def test_delivery_to_traversal_address_is_permanent_5_1_3(
    tmp_path: Path, address: str
) -> None:
    root = tmp_path / "maildirs"
    delivery = MaildirDelivery(root, hostname="h")
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_one(address, b"x\r\n")
    assert (info.value.temporary, info.value.status) == (False, "5.1.3")
    assert tree(tmp_path) == []


@pytest.mark.parametrize("folder", TRAVERSAL_FOLDERS)
def test_delivery_to_traversal_folder_is_permanent_5_1_3(
    tmp_path: Path, folder: str
) -> None:
    delivery = MaildirDelivery(tmp_path / "maildirs", hostname="h")
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_one("x@d.test", b"x\r\n", folder=folder)
    assert (info.value.temporary, info.value.status) == (False, "5.1.3")
    assert tree(tmp_path) == []


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside"
    target.mkdir()
    return target


@pytest.mark.parametrize(
    ("link", "address", "folder"),
    [
        ("evil.test", "x@evil.test", None),
        ("d.test/x", "x@d.test", None),
        ("d.test/x/.Sent", "x@d.test", "Sent"),
    ],
)
def test_symlink_escaping_the_root_is_refused(
    tmp_path: Path, outside: Path, link: str, address: str, folder: str | None
) -> None:
    root = tmp_path / "maildirs"
    (root / link).parent.mkdir(parents=True, exist_ok=True)
    (root / link).symlink_to(outside)
    delivery = MaildirDelivery(root, hostname="h")
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_one(address, b"x\r\n", folder=folder)
    assert info.value.status == "5.1.3"
    assert tree(outside) == []


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "maildirs"
    root.mkdir()
    (root / "loop.test").symlink_to(root / "loop.test")
    with pytest.raises(InvalidAddress):
        MaildirLayout(root).maildir_path("x@loop.test")


def test_symlink_inside_the_root_is_allowed(tmp_path: Path) -> None:
    root = tmp_path / "maildirs"
    (root / "real.test").mkdir(parents=True)
    (root / "alias.test").symlink_to(root / "real.test")
    path = MaildirDelivery(root, hostname="h").deliver_one("x@alias.test", b"x\r\n")
    assert (root / "real.test" / "x" / "new" / os.path.basename(path)).exists()


def test_ensure_creates_private_maildir_and_folder_with_marker(
    layout: MaildirLayout,
) -> None:
    folder = layout.maildir_path("x@d.test", "Archive.2024")
    layout.ensure(folder)
    mailbox = folder.parent
    for maildir in (mailbox, folder):
        for sub in ("tmp", "new", "cur"):
            mode = (maildir / sub).stat().st_mode
            assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) == 0o700
    assert (folder / "maildirfolder").is_file()
    assert not (mailbox / "maildirfolder").exists()
    assert stat.S_IMODE(layout.root.stat().st_mode) == 0o700


def test_ensure_is_cached_and_forget_recreates(
    layout: MaildirLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    maildir = layout.maildir_path("x@d.test")
    layout.ensure(maildir)
    calls: list[object] = []
    real_mkdir = os.mkdir
    monkeypatch.setattr(
        os, "mkdir", lambda *a, **k: (calls.append(a), real_mkdir(*a, **k))
    )
    layout.ensure(maildir)
    assert calls == []
    (maildir / "tmp").rmdir()
    layout.forget(maildir)
    layout.ensure(maildir)
    assert (maildir / "tmp").is_dir()


@pytest.fixture(scope="module")
def shared_layout(tmp_path_factory: pytest.TempPathFactory) -> MaildirLayout:
    return MaildirLayout(tmp_path_factory.mktemp("prop") / "maildirs")


@given(address=st.text(max_size=40), folder=st.none() | st.text(max_size=20))
def test_any_accepted_name_stays_one_level_per_part_inside_root(
    shared_layout: MaildirLayout, address: str, folder: str | None
) -> None:
    try:
        path = shared_layout.maildir_path(address, folder)
    except (InvalidAddress, InvalidFolder):
        return
    parts = path.relative_to(shared_layout.root).parts
    assert len(parts) in (2, 3)
    assert all(
        p not in ("", ".", "..") and "/" not in p and "\x00" not in p for p in parts
    )
    assert path.resolve().is_relative_to(shared_layout.root.resolve())


@given(address=st.from_regex(r"\A[a-z0-9._+-]{1,20}@[a-z0-9.-]{1,20}\Z"))
def test_plausible_addresses_map_inside_root_or_are_refused(
    shared_layout: MaildirLayout, address: str
) -> None:
    try:
        path = shared_layout.maildir_path(address)
    except InvalidAddress:
        return
    assert path.parent.parent == shared_layout.root
