"""mailstack trace: one message's path, read back from the JSON log."""

from __future__ import annotations

import io
import smtplib
from pathlib import Path

from twisted.logger import Logger, LogPublisher, jsonFileLogObserver

from mailstack import trace
from mailstack.cli import run
from mailstack.embedded import MailServer

PASSWORD = "a long test password"


def write_log(path: Path, events: list[tuple[str, dict]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        publisher = LogPublisher(jsonFileLogObserver(f))
        log = Logger(observer=publisher)
        for text, fields in events:
            log.info(text, **fields)


def test_a_trace_is_every_event_of_the_message_and_its_session_in_order(tmp_path):
    path = tmp_path / "log.jsonl"
    write_log(path, [
        ("{session_id} from {ip}: STARTTLS", {"session_id": "S1", "ip": "192.0.2.1"}),
        ("{queue_id} accepted from <{sender}> [{ip}] for {recipients}, {size} octets",
         {"queue_id": "Q1", "sender": "a@example.org", "ip": "192.0.2.1", "recipients": "<b@example.test>",
          "size": 10, "session_id": "S1", "helo": "client.example.org", "tls": "TLSv1.3", "auth": None,
          "message_id": "<m1@example.org>"}),
        ("{queue_id} accepted from <{sender}> [{ip}] for {recipients}, {size} octets",
         {"queue_id": "Q12", "sender": "x@example.org", "ip": "192.0.2.9", "recipients": "<c@example.test>",
          "size": 5, "session_id": "S2", "message_id": "<m2@example.org>"}),
        ("{queue_id} to <{rcpt}>: {status} {code} {error}",
         {"queue_id": "Q1", "rcpt": "far@remote.example", "status": "deferred", "code": 451, "error": "try later"}),
        ("{queue_id} bounce {bounce_id} to <{sender}> for {n} recipient(s)",
         {"queue_id": "Q1", "bounce_id": "Q9", "sender": "a@example.org", "n": 1}),
    ])
    with open(path, "a") as f:
        f.write('{"half a line\n')  # a crash mid-write: skipped
    found = trace.trace(path, "Q1")
    text = trace.lines(found)
    assert len(text) == 5 and found.related == ["Q9"]
    assert "STARTTLS" in text[0]
    assert "accepted from <a@example.org>" in text[1] and "session S1, HELO client.example.org, TLS TLSv1.3" in text[1]
    assert "Message-ID <m1@example.org>" in text[1]
    assert "deferred 451 try later" in text[2] and "bounce Q9" in text[3]
    assert text[4] == "led to Q9 (mailstack trace Q9)"
    assert not any("Q12" in line for line in text)
    assert trace.queue_ids_of(path, "m2@example.org") == ["Q12"]
    assert trace.queue_ids_of(path, "<nobody@example.org>") == []


def config_for(tmp_path: Path, log: Path, fmt: str = "json") -> Path:
    conf = tmp_path / "mailstack.toml"
    conf.write_text(f'[storage]\naccounts = "{tmp_path}/accounts.sqlite3"\n[log]\nformat = "{fmt}"\npath = "{log}"\n')
    return conf


def test_the_path_of_a_message_through_a_running_server(tmp_path):
    with MailServer(root=tmp_path / "server") as mail:
        mail.add_user("alice@example.test", PASSWORD)
        with smtplib.SMTP(*mail.smtp, timeout=10) as smtp:
            reply = smtp.sendmail("app@example.org", ["alice+tag@example.test"],
                                  b"Message-ID: <trace-1@example.org>\r\nSubject: traced\r\n\r\nx\r\n")
            assert reply == {}
        mail.wait_for_message(to="alice@example.test", subject="traced")
        log = tmp_path / "server" / "mailstack.log"
        [queue_id] = trace.queue_ids_of(log, "<trace-1@example.org>")
        out = io.StringIO()
        assert run(["--config", str(config_for(tmp_path, log)), "trace", "--message-id", "trace-1@example.org"],
                   stdout=out) == 0
        text = out.getvalue().splitlines()
        assert text[0] == f"{queue_id}:"
        assert any("accepted from <app@example.org> [127.0.0.1] for <alice+tag@example.test>" in line
                   and "Message-ID <trace-1@example.org>" in line for line in text)
        assert any(f"{queue_id} filed for <alice@example.test> in INBOX" in line for line in text)
        same = io.StringIO()
        assert run(["--config", str(config_for(tmp_path, log)), "trace", queue_id], stdout=same) == 0
        assert same.getvalue() == out.getvalue()


def test_without_a_json_log_the_error_says_how_to_get_one(tmp_path, capsys):
    conf = config_for(tmp_path, tmp_path / "missing.jsonl", fmt="text")
    assert run(["--config", str(conf), "trace", "Q1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and 'set [log] format = "json"' in err and "log.path" in err


def test_an_unknown_queue_id_exits_1(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    write_log(log, [("{queue_id} queued for {recipients}", {"queue_id": "Q5", "recipients": "<a@b.example>"})])
    assert run(["--config", str(config_for(tmp_path, log)), "trace", "Q6"]) == 1
    assert "Q6: nothing about it" in capsys.readouterr().out
