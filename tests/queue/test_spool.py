"""The spool: commit point, state log, crash leftovers, control requests."""

from __future__ import annotations

import errno
import os

import pytest

from mailstack.queue.spool import DELIVERED, FAILED, PENDING, QueuedMessage, RecipientState, Spool, SpoolError


def message(qid="Q1", rcpts=("a@remote.example", "b@remote.example")):
    return QueuedMessage(qid, "s@example.test", 1000.0, {r: RecipientState(r) for r in rcpts})


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "queue")
    s.ensure()
    return s


def test_prepared_message_is_not_queued_until_commit(spool):
    spool.prepare(message(), b"Subject: x\r\n\r\nbody\r\n")
    assert spool.ids() == []
    spool.commit("Q1")
    assert spool.ids() == ["Q1"]
    assert spool.body("Q1") == b"Subject: x\r\n\r\nbody\r\n"
    loaded = spool.load("Q1")
    assert loaded.sender == "s@example.test" and list(loaded.recipients) == ["a@remote.example", "b@remote.example"]


def test_abort_and_crash_leftovers_are_cleaned(spool):
    spool.prepare(message("Q2"), b"x")
    spool.abort("Q2")
    spool.prepare(message("Q3"), b"x")  # a crash before commit leaves this
    assert os.listdir(spool.tmp) == ["Q3"]
    assert spool.clean_tmp() == 1
    assert os.listdir(spool.tmp) == [] and spool.ids() == []


def test_last_state_line_per_recipient_wins(spool):
    spool.add(message(), b"x")
    spool.record("Q1", [RecipientState("a@remote.example", PENDING, 1, 2000.0, "421 busy", "4.4.2")])
    spool.record("Q1", [RecipientState("a@remote.example", DELIVERED, 2), RecipientState("b@remote.example", FAILED, 1,
                                                                                           0.0, "550", "5.1.1")])
    loaded = spool.load("Q1")
    assert loaded.recipients["a@remote.example"].status == DELIVERED
    assert loaded.recipients["b@remote.example"].status_code == "5.1.1"
    assert loaded.pending() == [] and not loaded.done()


def test_torn_last_state_line_is_ignored(spool):
    spool.add(message(), b"x")
    spool.record("Q1", [RecipientState("a@remote.example", DELIVERED, 1)])
    with open(spool.state / "Q1", "ab") as f:
        f.write(b'{"address": "b@remote.example", "sta')
    loaded = spool.load("Q1")
    assert loaded.recipients["a@remote.example"].status == DELIVERED
    assert loaded.recipients["b@remote.example"].status == PENDING


def test_remove_forgets_message_and_state(spool):
    spool.add(message(), b"x")
    spool.record("Q1", [RecipientState("a@remote.example", DELIVERED, 1)])
    spool.remove("Q1")
    assert spool.load("Q1") is None and os.listdir(spool.state) == []


def test_disk_full_is_reported_as_full(spool, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    with pytest.raises(SpoolError) as e:
        spool.prepare(message(), b"x")
    assert e.value.full
    assert os.listdir(spool.tmp) == []


def test_control_requests_round_trip(spool):
    spool.request("flush")
    spool.request("delete", "Q1")
    assert spool.take_requests() == [("flush", ""), ("delete", "Q1")]
    assert spool.take_requests() == []
