"""Atomic, durable Maildir delivery (mailstack.maildir.deliver)."""

from __future__ import annotations

import bisect
import errno
import itertools
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import LogEvent, globalLogPublisher

from mailstack.maildir import DeliveryError, MaildirDelivery, Recipient
from mailstack.maildir.names import size_from_name

BODY = b"From: a@example.test\r\nSubject: hi\r\n\r\nbody line\r\n.dot\r\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "maildirs"


@pytest.fixture
def delivery(root: Path) -> MaildirDelivery:
    return MaildirDelivery(root, hostname="mx.example.test")


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def files(root: Path, sub: str) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.parent.name == sub and p.is_file())


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def in_tmp(path: str) -> bool:
    return os.path.basename(os.path.dirname(path)) == "tmp"


def fail_on_call(
    n: int, real: Callable[..., Any], err: int = errno.EIO
) -> Callable[..., Any]:
    """A wrapper of ``real`` that raises OSError(err) on its n-th call (1-based)."""
    calls = itertools.count(1)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if next(calls) == n:
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    return wrapper


# -- content -------------------------------------------------------------------


def test_file_is_return_path_delivered_to_then_exact_message(
    delivery: MaildirDelivery, root: Path
) -> None:
    [path] = delivery.deliver_sync(
        "a@example.test", [Recipient("bob@example.test")], BODY
    )
    assert Path(path).parent == root / "example.test" / "bob" / "new"
    assert Path(path).read_bytes() == (
        b"Return-Path: <a@example.test>\r\nDelivered-To: bob@example.test\r\n" + BODY
    )


@pytest.mark.parametrize("sender", ["", "<>"])
def test_null_sender_is_an_empty_return_path(
    delivery: MaildirDelivery, sender: str
) -> None:
    [path] = delivery.deliver_sync(sender, [Recipient("bob@example.test")], BODY)
    assert Path(path).read_bytes().startswith(b"Return-Path: <>\r\nDelivered-To: ")


def test_delivered_to_is_the_original_address_of_an_alias(
    delivery: MaildirDelivery,
) -> None:
    rcpt = Recipient("bob@example.test", delivered_to="postmaster@example.test")
    [path] = delivery.deliver_sync("", [rcpt], BODY)
    assert b"\r\nDelivered-To: postmaster@example.test\r\n" in Path(path).read_bytes()


def test_utf8_addresses_are_written_as_utf8(delivery: MaildirDelivery) -> None:
    [path] = delivery.deliver_sync(
        "jörg@exämple.test", [Recipient("zoë@exämple.test")], BODY
    )
    assert (
        Path(path)
        .read_bytes()
        .startswith(
            "Return-Path: <jörg@exämple.test>\r\n"
            "Delivered-To: zoë@exämple.test\r\n".encode()
        )
    )


def test_size_field_is_the_file_size_and_file_is_private(
    delivery: MaildirDelivery,
) -> None:
    path = delivery.deliver_one("bob@example.test", BODY)
    st = os.stat(path)
    assert size_from_name(os.path.basename(path)) == st.st_size
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_empty_message_and_empty_recipient_list(delivery: MaildirDelivery) -> None:
    assert delivery.deliver_sync("", [], BODY) == []
    path = delivery.deliver_one("bob@example.test", b"")
    assert (
        Path(path).read_bytes()
        == b"Return-Path: <>\r\nDelivered-To: bob@example.test\r\n"
    )


def test_folder_delivery_goes_to_the_folder_new_dir(
    delivery: MaildirDelivery, root: Path
) -> None:
    path = delivery.deliver_one("bob@example.test", BODY, folder="Archive.2024")
    assert Path(path).parent == root / "example.test" / "bob" / ".Archive.2024" / "new"


def test_body_is_shared_not_copied_per_recipient(
    delivery: MaildirDelivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = BODY * 100
    seen: list[bool] = []
    real_writev = os.writev

    def writev(fd: int, buffers: list[memoryview]) -> int:
        seen.append(
            any(isinstance(b, memoryview) and b.obj is message for b in buffers)
        )
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", writev)
    rcpts = [Recipient(f"u{i}@example.test") for i in range(3)]
    delivery.deliver_sync("", rcpts, message)
    assert seen == [True, True, True]


def test_short_writes_are_continued(
    delivery: MaildirDelivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_writev = os.writev

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        return real_writev(fd, [bytes(b"".join(buffers)[:7])])

    monkeypatch.setattr(os, "writev", short_writev)
    path = delivery.deliver_one("bob@example.test", BODY)
    assert Path(path).read_bytes().endswith(BODY)
    assert size_from_name(os.path.basename(path)) == os.stat(path).st_size


def test_header_injection_in_sender_is_refused_5_1_7(
    delivery: MaildirDelivery, root: Path
) -> None:
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_sync("a@b\r\nX-Evil: 1", [Recipient("bob@example.test")], BODY)
    assert (info.value.temporary, info.value.status) == (False, "5.1.7")
    assert files(root, "new") == []


def test_header_injection_in_delivered_to_is_refused_5_1_3(
    delivery: MaildirDelivery,
) -> None:
    rcpt = Recipient("bob@example.test", delivered_to="x@y\nX-Evil: 1")
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_sync("", [rcpt], BODY)
    assert info.value.status == "5.1.3"


def test_removed_maildir_is_created_again(
    delivery: MaildirDelivery, root: Path
) -> None:
    delivery.deliver_one("bob@example.test", BODY)
    (root / "example.test" / "bob" / "tmp").rmdir()
    path = delivery.deliver_one("bob@example.test", BODY)
    assert Path(path).is_file()


# -- all or nothing ------------------------------------------------------------

RCPTS = [
    Recipient("a@example.test"),
    Recipient("b@example.test"),
    Recipient("c@other.test"),
]


@pytest.mark.parametrize("call", ["writev", "fsync"])
def test_failing_second_recipient_leaves_nothing_anywhere(
    delivery: MaildirDelivery, root: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    delivery.deliver_sync("", RCPTS, b"warm\r\n")  # existing mail must stay
    before = files(root, "new")
    monkeypatch.setattr(os, call, fail_on_call(2, getattr(os, call)))
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_sync("", RCPTS, BODY)
    assert info.value.recipient == "b@example.test"
    assert info.value.temporary and info.value.status == "4.3.0"
    assert files(root, "new") == before
    assert files(root, "tmp") == []


def test_nothing_is_in_new_until_every_tmp_file_is_fsynced(
    delivery: MaildirDelivery, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    checked: list[str] = []

    def fsync(fd: int) -> None:
        path = fd_path(fd)
        if in_tmp(path):
            assert files(root, "new") == []
            checked.append(path)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    delivery.deliver_sync("", RCPTS, BODY)
    assert len(checked) == 3
    assert len(files(root, "new")) == 3


def test_failed_rename_withdraws_the_renames_already_made(
    delivery: MaildirDelivery, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "rename", fail_on_call(3, os.rename))
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_sync("", RCPTS, BODY)
    assert info.value.recipient == "c@other.test"
    assert files(root, "new") == []
    assert files(root, "tmp") == []


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "status"),
    [
        (errno.ENOSPC, "4.3.1"),
        (errno.EDQUOT, "4.3.1"),
        (errno.EIO, "4.3.0"),
        (errno.EACCES, "4.3.0"),
    ],
)
def test_write_errors_are_temporary_with_cause_logged(
    delivery: MaildirDelivery,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    log_events: list[LogEvent],
    err: int,
    status: str,
) -> None:
    monkeypatch.setattr(os, "writev", fail_on_call(1, os.writev, err))
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_one("bob@example.test", BODY)
    assert (info.value.temporary, info.value.status) == (True, status)
    assert isinstance(info.value.cause, OSError) and info.value.cause.errno == err
    assert str(root) not in str(info.value)  # the client text names no path
    assert files(root, "tmp") == [] and files(root, "new") == []
    [event] = [
        e for e in log_events if e.get("log_namespace", "").endswith("MaildirDelivery")
    ]
    assert event["error"].errno == err and event["recipient"] == "bob@example.test"


def test_enospc_while_creating_the_maildir_is_4_3_1(
    delivery: MaildirDelivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "mkdir", fail_on_call(1, os.mkdir, errno.ENOSPC))
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_one("bob@example.test", BODY)
    assert info.value.status == "4.3.1"


def test_failed_new_dir_fsync_is_temporary(
    delivery: MaildirDelivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivery.deliver_one("bob@example.test", b"warm\r\n")
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if fd_path(fd).endswith("/new"):
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DeliveryError) as info:
        delivery.deliver_one("bob@example.test", BODY)
    assert (info.value.temporary, info.value.status) == (True, "4.3.0")


def test_delivery_error_status_must_match_temporary() -> None:
    with pytest.raises(ValueError):
        DeliveryError("x", temporary=True, status="5.2.2")


# -- durability ----------------------------------------------------------------


class SyscallRecorder:
    """Records renames and fsyncs in one global order; can skip the real fsyncs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, real_fsync: bool) -> None:
        self._seq = itertools.count()
        self.renames: dict[str, int] = {}
        self.returns: dict[str, int] = {}
        self.syncs: list[tuple[str, int, int]] = []  # (path, start, end)
        self.file_syncs: list[str] = []
        sync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            path = fd_path(fd)
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
            start = next(self._seq)
            if real_fsync:
                sync(fd)
            if is_dir:
                self.syncs.append((path, start, next(self._seq)))
            else:
                self.file_syncs.append(path)

        def rename(src: str, dst: str) -> None:
            real_rename(src, dst)
            self.renames[dst] = next(self._seq)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)

    def returned(self, paths: list[str]) -> None:
        seq = next(self._seq)
        for path in paths:
            self.returns[path] = seq

    def assert_new_dir_synced_after_rename_before_return(self) -> None:
        by_dir: dict[str, list[tuple[int, int]]] = {}
        for path, start, end in sorted(self.syncs, key=lambda s: s[1]):
            by_dir.setdefault(path, []).append((start, end))
        for path, returned in self.returns.items():
            syncs = by_dir[os.path.dirname(path)]
            renamed = self.renames[path]
            first_after = bisect.bisect_right(syncs, (renamed, renamed))
            assert first_after < len(syncs), f"no fsync of new/ after renaming {path}"
            start, end = syncs[first_after]
            assert renamed < start and end < returned, path


def test_file_and_new_dir_are_fsynced_in_order(
    delivery: MaildirDelivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    delivery.deliver_sync("", RCPTS, b"warm\r\n")  # Maildirs exist: only delivery syncs
    rec = SyscallRecorder(monkeypatch, real_fsync=True)
    paths = delivery.deliver_sync("", RCPTS, BODY)
    rec.returned(paths)
    assert sorted(os.path.basename(p) for p in rec.file_syncs) == sorted(
        os.path.basename(p) for p in paths
    )
    assert all(in_tmp(p) for p in rec.file_syncs)
    rec.assert_new_dir_synced_after_rename_before_return()
    # three mailboxes: three new/ directories, one fsync each
    assert sorted(p for p, _, _ in rec.syncs) == sorted(
        {os.path.dirname(p) for p in paths}
    )


def test_concurrent_deliveries_are_unique_present_and_durable(
    delivery: MaildirDelivery, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads_n, per_thread = 8, 200
    rcpt = [Recipient("bob@example.test")]
    delivery.deliver_sync("", rcpt, b"warm\r\n")
    rec = SyscallRecorder(monkeypatch, real_fsync=False)
    results: list[list[str]] = [[] for _ in range(threads_n)]
    start = threading.Barrier(threads_n)

    def work(out: list[str]) -> None:
        start.wait()
        for i in range(per_thread):
            paths = delivery.deliver_sync("", rcpt, b"%d\r\n" % i)
            rec.returned(paths)
            out.extend(paths)

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    delivered = [p for out in results for p in out]
    assert len(delivered) == len(set(delivered)) == threads_n * per_thread
    on_disk = {str(p) for p in files(root, "new")}
    assert set(delivered) <= on_disk and len(on_disk) == len(delivered) + 1
    assert files(root, "tmp") == []
    rec.assert_new_dir_synced_after_rename_before_return()
    assert len(rec.syncs) <= len(delivered)  # group commit: usually far fewer
