"""``dns-records``: TLS reporting always, and the web names and the MTA-STS record with an HTTP listener."""

from __future__ import annotations

from mailstack.dnsrecords import records


def _by_name(found) -> dict[str, tuple[str, str]]:
    return {r.name: (r.type, r.value) for r in found}


def test_tls_reports_are_asked_for_and_web_names_need_the_http_listener() -> None:
    plain = _by_name(records("example.org", "mail.example.org", [], {"imaps", "submissions"}, "abc123"))
    assert plain["_smtp._tls.example.org."] == ("TXT", '"v=TLSRPTv1; rua=mailto:postmaster@example.org"')
    assert "mta-sts.example.org." not in plain and "_mta-sts.example.org." not in plain
    http_only = _by_name(records("example.org", "mail.example.org", [], {"imaps", "http"}, "abc123"))
    assert http_only["autoconfig.example.org."] == ("CNAME", "mail.example.org.")
    assert "_mta-sts.example.org." not in http_only  # no policy id without HTTPS to fetch it over
    web = _by_name(records("example.org", "mail.example.org", [], {"imaps", "https"}, "abc123"))
    for name in ("autoconfig", "autodiscover", "mta-sts"):
        assert web[f"{name}.example.org."] == ("CNAME", "mail.example.org.")
    assert web["_mta-sts.example.org."] == ("TXT", '"v=STSv1; id=abc123"')


def test_the_sieve_srv_record_points_here_when_managesieve_listens() -> None:
    found = _by_name(records("example.org", "mail.example.org", [], {"managesieve"}))
    assert found["_sieve._tcp.example.org."] == ("SRV", "0 1 4190 mail.example.org.")
