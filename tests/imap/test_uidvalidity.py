"""RFC 3501 §2.3.1.1: a folder's UIDVALIDITY never comes back with different UIDs behind it."""

from __future__ import annotations

from mailstack.maildir import index

from .harness import uidvalidity


def test_folder_deleted_and_recreated_in_the_same_second_gets_a_higher_uidvalidity(client, monkeypatch):
    monkeypatch.setattr(index.time, "time", lambda: 1_800_000_000.5)  # the clock stands still
    client.ok("CREATE Work")
    client.ok("APPEND Work {4+}\r\nmail")
    first = uidvalidity(client.ok("SELECT Work"))
    client.ok("UNSELECT")
    client.ok("DELETE Work")
    client.ok("CREATE Work")
    client.ok("APPEND Work {4+}\r\nnext")
    second = uidvalidity(client.ok("SELECT Work"))
    assert second > first


def test_uidvalidity_is_increasing_across_folders_and_remembered(world, client, monkeypatch):
    monkeypatch.setattr(index.time, "time", lambda: 1_800_000_000.0)
    values = []
    for name in ("A", "B", "C"):
        client.ok(f"CREATE {name}")
        values.append(uidvalidity(client.ok(f'STATUS {name} (UIDVALIDITY)')))
    assert values == sorted(set(values))
    monkeypatch.setattr(index.time, "time", lambda: 1_000_000_000.0)  # the clock went back
    client.ok("CREATE D")
    assert uidvalidity(client.ok("STATUS D (UIDVALIDITY)")) > values[-1]


def test_issue_uidvalidity_survives_a_new_process(tmp_path, monkeypatch):
    monkeypatch.setattr(index.time, "time", lambda: 1_800_000_000.0)
    assert index.issue_uidvalidity(tmp_path) == 1_800_000_000
    assert index.issue_uidvalidity(tmp_path) == 1_800_000_001
