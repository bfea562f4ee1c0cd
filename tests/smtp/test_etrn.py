"""ETRN (RFC 1985) on port 25: relay-network clients start the queue for a domain; ATRN and TURN are 502."""

from __future__ import annotations

import ipaddress

from mailstack.testing import smtp_harness

RELAY = [ipaddress.ip_network("192.0.2.0/24")]


class Queue:
    def __init__(self, waiting: dict[str, int], fail: bool = False) -> None:
        self.waiting = waiting
        self.fail = fail
        self.asked: list[tuple[str, bool]] = []

    async def start_domain(self, domain: str, subdomains: bool) -> int:
        self.asked.append((domain, subdomains))
        if self.fail:
            raise OSError(5, "Input/output error")
        return self.waiting.get(domain, 0)


def test_etrn_is_advertised_on_port_25_and_starts_the_domain_for_the_relay_networks() -> None:
    queue = Queue({"example.org": 3})
    h = smtp_harness(trusted=RELAY, queue=queue)
    assert "250-ETRN" in h.replies("EHLO client.example\r\n")
    assert h.replies("ETRN Example.ORG\r\n") == ["252 2.0.0 OK, pending messages for node example.org started"]
    assert h.replies("ETRN @example.net\r\n") == ["251 2.0.0 OK, no messages waiting for node @example.net"]
    assert queue.asked == [("example.org", False), ("example.net", True)]


def test_etrn_from_elsewhere_a_named_queue_bad_syntax_and_a_transaction_are_refused() -> None:
    queue = Queue({"example.org": 3})
    outsider = smtp_harness(queue=queue)  # 192.0.2.10 is not a relay network here
    outsider.replies("EHLO client.example\r\n")
    assert outsider.replies("ETRN example.org\r\n") == ["459 4.7.1 Node not allowed: ETRN is for the relay networks only"]
    assert outsider.replies("ETRN #queue1\r\n")[0].startswith("459 ")
    h = smtp_harness(trusted=RELAY, queue=queue)
    h.read()  # the greeting
    assert h.replies("ETRN example.org\r\n")[0].startswith("503 ")  # EHLO first
    h.replies("EHLO client.example\r\n")
    assert h.replies("ETRN #queue1\r\n") == [
        "458 4.3.0 Unable to queue messages for that node: there are no named queues"]
    assert h.replies("ETRN #a\rb\r\n") == [  # what the client named is not echoed
        "458 4.3.0 Unable to queue messages for that node: there are no named queues"]
    assert h.replies("ETRN\r\n")[0].startswith("501 5.5.4 ")
    assert h.replies("ETRN bad..domain\r\n")[0].startswith("501 5.5.4 ")
    h.replies("MAIL FROM:<a@example.org>\r\n")
    assert h.replies("ETRN example.org\r\n") == ["503 5.5.1 ETRN is not allowed inside a mail transaction"]
    assert queue.asked == []


def test_a_queue_that_cannot_be_read_is_458_and_other_roles_know_no_etrn() -> None:
    h = smtp_harness(trusted=RELAY, queue=Queue({}, fail=True))
    h.replies("EHLO client.example\r\n")
    assert h.replies("ETRN example.org\r\n") == ["458 4.3.0 Unable to queue messages for node example.org"]
    submission = smtp_harness("submission", trusted=RELAY)
    ehlo = submission.replies("EHLO client.example\r\n")
    assert not any("ETRN" in line for line in ehlo)
    assert submission.replies("ETRN example.org\r\n") == ["502 5.5.1 Command not implemented"]
    for verb in ("ATRN example.org", "TURN"):
        assert submission.replies(verb + "\r\n") == ["502 5.5.1 Command not implemented"]
