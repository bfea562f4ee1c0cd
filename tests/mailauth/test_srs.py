"""SRS: forwarded mail leaves under a rewritten sender, and its bounces find the original one."""

from __future__ import annotations

import os
import stat

import pytest

from mailstack.envelope import RecipientRoute
from mailstack.inbound import InboundPolicy
from mailstack.interfaces import ClientInfo
from mailstack.smtp.reply import SMTPReplyError
from mailstack.srs import SRS, load_secret
from mailstack.testing import FakeAccounts

NOW = [1_800_000_000.0]


def srs() -> SRS:
    return SRS(b"k" * 32, clock=lambda: NOW[0])


def test_round_trip_and_what_is_refused():
    rewritten = srs().forward("alice@sender.example", "fwd.test")
    assert rewritten.startswith("SRS0=") and rewritten.endswith("=sender.example=alice@fwd.test")
    assert srs().reverse(rewritten) == "alice@sender.example"
    assert srs().reverse(rewritten.upper()) is not None  # a hop may change the case of the local part
    local, _, domain = rewritten.partition("@")
    tampered = "SRS0=AAAA" + local[9:] + "@" + domain
    assert srs().reverse(tampered) is None
    assert srs().reverse(rewritten.replace("alice", "mallory")) is None
    assert SRS(b"x" * 32, clock=lambda: NOW[0]).reverse(rewritten) is None  # another server's key
    assert srs().reverse("alice@fwd.test") is None and srs().reverse("SRS0=garbage@fwd.test") is None
    assert srs().forward("", "fwd.test") == ""  # bounces stay bounces
    assert srs().forward("bob@fwd.test", "fwd.test") == "bob@fwd.test"  # already ours


def test_rewritten_senders_expire_after_three_weeks():
    rewritten = srs().forward("alice@sender.example", "fwd.test")
    NOW[0] += 20 * 86400
    try:
        assert srs().reverse(rewritten) == "alice@sender.example"
        NOW[0] += 2 * 86400
        assert srs().reverse(rewritten) is None
    finally:
        NOW[0] -= 22 * 86400


def test_the_secret_is_made_once_and_private(tmp_path):
    path = tmp_path / "var" / "srs.key"
    first = load_secret(path)
    assert len(first) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(path) == first


def test_port_25_accepts_bounces_to_its_rewritten_senders_only():
    policy = InboundPolicy(FakeAccounts(domains=["fwd.test"], users=["bob@fwd.test"]), srs=srs())
    stranger = ClientInfo("192.0.2.1", "mx.elsewhere.example", True, None, False)
    rewritten = srs().forward("alice@sender.example", "fwd.test")
    route = policy.check_rcpt(stranger, rewritten)
    assert route == RecipientRoute(rewritten, (), ("alice@sender.example",))
    with pytest.raises(SMTPReplyError) as refused:
        policy.check_rcpt(stranger, "SRS0=AAAA=AB=victim.example=x@fwd.test")  # no open relay
    assert refused.value.reply.code == 550
