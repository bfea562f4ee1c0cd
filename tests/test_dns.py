"""MX routing: FakeResolver (in memory) and the in-process authoritative server (loopback UDP)."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.names import client, dns, resolve
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailstack.config import HostPort
from mailstack.dns import DNSError, MXHost, MXResolver, NullMX, make_resolver, to_ascii
from mailstack.testing_dns import SERVFAIL, TIMEOUT, FakeResolver, start_dns_server

ZONES: dict[str, Any] = {
    "example.test": {"MX": [(20, "mx2.example.test"), (10, "mx1.example.test")]},
    "mx1.example.test": {"A": ["192.0.2.1"]},
    "mx2.example.test": {"A": ["192.0.2.2"], "AAAA": ["2001:db8::2"]},
    "equal.test": {"MX": [(10, f"m{i}.equal.test") for i in range(6)] + [(5, "first.equal.test")]},
    **{f"m{i}.equal.test": {"A": [f"192.0.2.{10 + i}"]} for i in range(6)},
    "first.equal.test": {"A": ["192.0.2.9"]},
    "implicit.test": {"A": ["192.0.2.30"], "AAAA": ["2001:db8::30"]},
    "v6only.test": {"MX": [(10, "mx.v6only.test")]},
    "mx.v6only.test": {"AAAA": ["2001:db8::6"]},
    "nomail.test": {"MX": [(0, ".")]},
    "empty.test": {},
    "broken.test": SERVFAIL,
    "slow.test": TIMEOUT,
    "alias.test": {"CNAME": "chain1.test"},
    "chain1.test": {"CNAME": "example.test"},
    "loop1.test": {"CNAME": "loop2.test"},
    "loop2.test": {"CNAME": "loop1.test"},
    "partial.test": {"MX": [(10, "gone.partial.test"), (20, "ok.partial.test")]},
    "ok.partial.test": {"A": ["192.0.2.40"]},
    "deadmx.test": {"MX": [(10, "gone.deadmx.test")]},
    "tempmx.test": {"MX": [(10, "broken.test")]},
    "mxalias.test": {"MX": [(10, "alias-host.mxalias.test")]},
    "alias-host.mxalias.test": {"CNAME": "mx1.example.test"},
    "xn--bcher-kva.test": {"MX": [(10, "mx1.example.test")]},
    "s1._domainkey.example.test": {"TXT": ["v=DKIM1; k=rsa; p=" + "A" * 400]},  # > 255: several strings
    "txt-alias.test": {"CNAME": "s1._domainkey.example.test"},
    "two.txt.test": {"TXT": ["first", "second"]},
    "huge.txt.test": {"TXT": ["x" * 250] * 300},
}


def chain(depth: int) -> dict[str, Any]:
    zones: dict[str, Any] = {f"c{i}.test": {"CNAME": f"c{i + 1}.test"} for i in range(depth)}
    zones[f"c{depth}.test"] = {"A": ["192.0.2.77"]}
    return zones


class MXResolverTests(SynchronousTestCase):
    def lookup(self, domain: str, zones: dict[str, Any] | None = None, **kw: Any) -> list[MXHost]:
        resolver = MXResolver(FakeResolver(ZONES if zones is None else zones), rng=random.Random(1), **kw)
        return self.successResultOf(defer.Deferred.fromCoroutine(resolver.lookup(domain)))

    def fail_lookup(self, domain: str, zones: dict[str, Any] | None = None, **kw: Any) -> DNSError:
        resolver = MXResolver(FakeResolver(ZONES if zones is None else zones), rng=random.Random(1), **kw)
        failure = self.failureResultOf(defer.Deferred.fromCoroutine(resolver.lookup(domain)), DNSError)
        return failure.value  # type: ignore[no-any-return]

    def test_preference_order(self) -> None:
        self.assertEqual(self.lookup("example.test"), [
            MXHost("mx1.example.test", 10, ("192.0.2.1",)),
            MXHost("mx2.example.test", 20, ("192.0.2.2", "2001:db8::2")),
        ])

    def test_case_and_trailing_dot(self) -> None:
        self.assertEqual([h.name for h in self.lookup("EXAMPLE.test.")], ["mx1.example.test", "mx2.example.test"])

    def test_equal_preferences_random_but_seeded(self) -> None:
        orders = set()
        for seed in range(20):
            resolver = MXResolver(FakeResolver(ZONES), rng=random.Random(seed))
            hosts = self.successResultOf(defer.Deferred.fromCoroutine(resolver.lookup("equal.test")))
            self.assertEqual(hosts[0].name, "first.equal.test")
            self.assertEqual(sorted(h.name for h in hosts[1:]), [f"m{i}.equal.test" for i in range(6)])
            self.assertEqual({h.preference for h in hosts[1:]}, {10})
            orders.add(tuple(h.name for h in hosts))
        self.assertGreater(len(orders), 5)
        # same seed, same order
        self.assertEqual(self.lookup("equal.test"), self.lookup("equal.test"))

    def test_implicit_mx(self) -> None:
        self.assertEqual(self.lookup("implicit.test"),
                         [MXHost("implicit.test", 0, ("192.0.2.30", "2001:db8::30"))])

    def test_implicit_mx_without_address_is_permanent(self) -> None:
        err = self.fail_lookup("empty.test")
        self.assertFalse(err.temporary)
        self.assertEqual(err.status, "5.1.2")

    def test_ipv6_only_mx(self) -> None:
        self.assertEqual(self.lookup("v6only.test"), [MXHost("mx.v6only.test", 10, ("2001:db8::6",))])

    def test_null_mx(self) -> None:
        err = self.fail_lookup("nomail.test")
        self.assertIsInstance(err, NullMX)
        self.assertFalse(err.temporary)
        self.assertEqual(err.status, "5.1.10")
        self.assertEqual((err.reply.code, err.reply.enhanced), (556, "5.1.10"))

    def test_nxdomain_permanent(self) -> None:
        err = self.fail_lookup("nowhere.test")
        self.assertFalse(err.temporary)
        self.assertEqual(err.status, "5.1.2")
        self.assertEqual(err.reply.code, 550)

    def test_servfail_temporary(self) -> None:
        err = self.fail_lookup("broken.test")
        self.assertTrue(err.temporary)
        self.assertEqual(err.status, "4.4.3")
        self.assertEqual(err.reply.code, 451)

    def test_timeout_temporary(self) -> None:
        err = self.fail_lookup("slow.test")
        self.assertTrue(err.temporary)
        self.assertEqual(err.status, "4.4.3")

    def txt(self, name: str) -> list[bytes]:
        resolver = MXResolver(FakeResolver(ZONES))
        return self.successResultOf(defer.Deferred.fromCoroutine(resolver.lookup_txt(name)))  # type: ignore[no-any-return]

    def test_txt_records_joined_and_following_cnames(self) -> None:
        self.assertEqual(self.txt("s1._domainkey.example.test"), [b"v=DKIM1; k=rsa; p=" + b"A" * 400])
        self.assertEqual(self.txt("txt-alias.test"), [b"v=DKIM1; k=rsa; p=" + b"A" * 400])
        self.assertEqual(sorted(self.txt("two.txt.test")), [b"first", b"second"])
        self.assertEqual(self.txt("nowhere.test"), [])  # NXDOMAIN: no record
        self.assertEqual(self.txt("empty.test"), [])  # NODATA

    def test_txt_trouble_is_temporary_and_enormous_answers_refused(self) -> None:
        resolver = MXResolver(FakeResolver(ZONES))
        for name in ("broken.test", "slow.test", "huge.txt.test"):
            failure = self.failureResultOf(defer.Deferred.fromCoroutine(resolver.lookup_txt(name)), DNSError)
            self.assertEqual(failure.value.temporary, name != "huge.txt.test", name)

    def test_cname_chain(self) -> None:
        self.assertEqual([h.name for h in self.lookup("alias.test")], ["mx1.example.test", "mx2.example.test"])

    def test_mx_target_behind_cname(self) -> None:
        self.assertEqual(self.lookup("mxalias.test"), [MXHost("alias-host.mxalias.test", 10, ("192.0.2.1",))])

    def test_cname_loop_is_bounded(self) -> None:
        err = self.fail_lookup("loop1.test")
        self.assertTrue(err.temporary)

    def test_cname_depth_bound(self) -> None:
        self.assertEqual(self.lookup("c0.test", chain(3), max_cname_depth=3)[0].addresses, ("192.0.2.77",))
        err = self.fail_lookup("c0.test", chain(4), max_cname_depth=3)
        self.assertTrue(err.temporary)

    def test_unresolvable_mx_host_skipped(self) -> None:
        self.assertEqual(self.lookup("partial.test"), [MXHost("ok.partial.test", 20, ("192.0.2.40",))])

    def test_no_usable_mx_host_is_temporary(self) -> None:
        err = self.fail_lookup("deadmx.test")
        self.assertTrue(err.temporary)
        self.assertEqual(err.status, "4.4.4")
        err = self.fail_lookup("tempmx.test")
        self.assertTrue(err.temporary)
        self.assertEqual(err.status, "4.4.3")

    def test_address_literals(self) -> None:
        self.assertEqual(self.lookup("[192.0.2.5]"), [MXHost("[192.0.2.5]", 0, ("192.0.2.5",))])
        self.assertEqual(self.lookup("[IPv6:2001:DB8::5]"), [MXHost("[IPv6:2001:DB8::5]", 0, ("2001:db8::5",))])
        self.assertEqual(self.fail_lookup("[999.1.1.1]").status, "5.1.3")

    def test_literal_asks_no_dns(self) -> None:
        fake = FakeResolver(ZONES)
        self.successResultOf(defer.Deferred.fromCoroutine(MXResolver(fake).lookup("[192.0.2.5]")))
        self.assertEqual(fake.queries, [])

    def test_idn_domain_queried_as_a_label(self) -> None:
        fake = FakeResolver(ZONES)
        hosts = self.successResultOf(defer.Deferred.fromCoroutine(MXResolver(fake).lookup("Bücher.test")))
        self.assertEqual(hosts[0].name, "mx1.example.test")
        self.assertEqual(fake.queries[0][0], "xn--bcher-kva.test")

    def test_to_ascii(self) -> None:
        self.assertEqual(to_ascii("bücher.TEST."), "xn--bcher-kva.test")
        self.assertEqual(to_ascii("Example.Test"), "example.test")

    def test_resolve_host(self) -> None:
        resolver = MXResolver(FakeResolver(ZONES))
        self.assertEqual(self.successResultOf(defer.Deferred.fromCoroutine(resolver.resolve_host("mx2.example.test"))),
                         ("192.0.2.2", "2001:db8::2"))
        self.assertEqual(self.successResultOf(defer.Deferred.fromCoroutine(resolver.resolve_host("192.0.2.8"))),
                         ("192.0.2.8",))


class MakeResolverTests(SynchronousTestCase):
    def test_configured_servers(self) -> None:
        reactor = MemoryReactorClock()
        resolver = make_resolver((HostPort("127.0.0.1", 5353), HostPort("::1", 53)), reactor)
        self.assertIsInstance(resolver, client.Resolver)
        self.assertEqual(resolver.servers, [("127.0.0.1", 5353), ("::1", 53)])
        self.assertEqual(resolver.timeout, (1, 3, 6))

    def test_system_resolver(self) -> None:
        resolver = make_resolver((), Clock(), resolv_conf="/nonexistent/resolv.conf")
        self.assertIsInstance(resolver, resolve.ResolverChain)


class LoopbackDNSTests(TestCase):
    """The same lookups through a real twisted.names client and server over 127.0.0.1."""

    timeout = 30

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        port, stop = start_dns_server(ZONES, reactor)
        self.addCleanup(stop)
        self.resolver = make_resolver((HostPort("127.0.0.1", port),), reactor, timeout=(1,))
        self.mx = MXResolver(self.resolver, rng=random.Random(3))

    async def _failure(self, domain: str) -> DNSError:
        try:
            await self.mx.lookup(domain)
        except DNSError as e:
            return e
        raise AssertionError(f"{domain} resolved")

    def test_preference_and_ipv6(self) -> defer.Deferred[None]:
        async def go() -> None:
            hosts = await self.mx.lookup("example.test")
            self.assertEqual(hosts, [MXHost("mx1.example.test", 10, ("192.0.2.1",)),
                                     MXHost("mx2.example.test", 20, ("192.0.2.2", "2001:db8::2"))])
        return defer.Deferred.fromCoroutine(go())

    def test_txt_over_the_wire(self) -> defer.Deferred[None]:
        async def go() -> None:
            self.assertEqual(await self.mx.lookup_txt("s1._domainkey.example.test"),
                             [b"v=DKIM1; k=rsa; p=" + b"A" * 400])
            self.assertEqual(await self.mx.lookup_txt("nowhere.test"), [])
        return defer.Deferred.fromCoroutine(go())

    def test_equal_preferences(self) -> defer.Deferred[None]:
        async def go() -> None:
            hosts = await self.mx.lookup("equal.test")
            self.assertEqual(hosts[0].name, "first.equal.test")
            self.assertEqual(len(hosts), 7)
        return defer.Deferred.fromCoroutine(go())

    def test_implicit_null_nxdomain_servfail(self) -> defer.Deferred[None]:
        async def go() -> None:
            self.assertEqual(await self.mx.lookup("implicit.test"),
                             [MXHost("implicit.test", 0, ("192.0.2.30", "2001:db8::30"))])
            self.assertIsInstance(await self._failure("nomail.test"), NullMX)
            nx = await self._failure("nowhere.test")
            self.assertEqual((nx.temporary, nx.status), (False, "5.1.2"))
            sf = await self._failure("broken.test")
            self.assertEqual((sf.temporary, sf.status), (True, "4.4.3"))
        return defer.Deferred.fromCoroutine(go())

    def test_cnames(self) -> defer.Deferred[None]:
        async def go() -> None:
            self.assertEqual([h.name for h in await self.mx.lookup("alias.test")],
                             ["mx1.example.test", "mx2.example.test"])
            self.assertEqual((await self.mx.lookup("mxalias.test"))[0].addresses, ("192.0.2.1",))
            self.assertTrue((await self._failure("loop1.test")).temporary)
        return defer.Deferred.fromCoroutine(go())

    def test_timeout_is_temporary(self) -> defer.Deferred[None]:
        async def go() -> None:
            err = await self._failure("slow.test")
            self.assertEqual((err.temporary, err.status), (True, "4.4.3"))
        return defer.Deferred.fromCoroutine(go())


def test_reverse_lookup_only_for_global_addresses():
    from twisted.internet.defer import Deferred, succeed
    from twisted.names import dns as tdns

    from mailstack.dns import MXResolver

    asked = []

    class PTRResolver:
        def lookupPointer(self, name, timeout=None):
            asked.append(name)
            rr = tdns.RRHeader(name=name, type=tdns.PTR, payload=tdns.Record_PTR(b"host.example.net."))
            return succeed(([rr], [], []))

    resolver = MXResolver(PTRResolver())

    def run(ip):
        out = []
        Deferred.fromCoroutine(resolver.reverse(ip)).addCallback(out.append)
        return out[0]

    assert run("127.0.0.1") is None and run("10.1.2.3") is None and run("::1") is None
    assert asked == []
    assert run("8.8.8.8") == "host.example.net"
    assert asked == ["8.8.8.8.in-addr.arpa"]


class CacheTests(SynchronousTestCase):
    def test_answers_are_kept_for_their_ttl_and_missing_names_for_a_minute(self) -> None:
        from twisted.internet.task import Clock

        clock = Clock()
        fake = FakeResolver(ZONES)
        resolver = MXResolver(fake, clock=clock.seconds)

        def txt(name: str) -> list[bytes]:
            return self.successResultOf(defer.Deferred.fromCoroutine(resolver.lookup_txt(name)))  # type: ignore[no-any-return]

        for _ in range(3):
            self.assertEqual(txt("two.txt.test"), [b"first", b"second"])
            self.assertEqual(txt("nowhere.test"), [])
        self.assertEqual(len(fake.queries), 2)  # one each: the rest came from the cache
        clock.advance(61)  # the test records' TTL and the negative time have passed
        txt("two.txt.test")
        txt("nowhere.test")
        self.assertEqual(len(fake.queries), 4)
        failure = self.failureResultOf(defer.Deferred.fromCoroutine(resolver.lookup_txt("broken.test")), DNSError)
        self.assertTrue(failure.value.temporary)
        self.failureResultOf(defer.Deferred.fromCoroutine(resolver.lookup_txt("broken.test")), DNSError)
        self.assertEqual(len(fake.queries), 6)  # failures are never cached

    def test_cached_records_answer_without_asking_or_say_they_cannot(self) -> None:
        clock = Clock()
        fake = FakeResolver(ZONES)
        resolver = MXResolver(fake, clock=clock.seconds)
        self.assertIsNone(resolver.cached_records("txt-alias.test", dns.TXT))  # nothing asked yet
        self.assertEqual(fake.queries, [])
        self.successResultOf(defer.Deferred.fromCoroutine(resolver.lookup_records("txt-alias.test", dns.TXT)))
        self.successResultOf(defer.Deferred.fromCoroutine(resolver.lookup_records("nowhere.test", dns.TXT)))
        asked = len(fake.queries)
        [record] = resolver.cached_records("TXT-alias.test.", dns.TXT) or []  # the CNAME followed, from the cache
        self.assertTrue(b"".join(record.data).startswith(b"v=DKIM1"))
        self.assertEqual(resolver.cached_records("nowhere.test", dns.TXT), [])  # NXDOMAIN, remembered
        self.assertIsNone(resolver.cached_records("two.txt.test", dns.TXT))
        self.assertIsNone(resolver.cached_records("bad..name", dns.TXT))
        self.assertEqual(len(fake.queries), asked)  # never a query of its own
        clock.advance(61)
        self.assertIsNone(resolver.cached_records("txt-alias.test", dns.TXT))  # expired
        self.assertIsNone(MXResolver(fake).cached_records("txt-alias.test", dns.TXT))  # no cache at all
