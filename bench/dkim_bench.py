"""DKIM signing and verification speed: messages/s for 4 KB and 1 MB messages, RSA-2048 and Ed25519.

Signs with mailstack's signer (dkimpy underneath, relaxed/relaxed) and verifies
each signature the way the port-25 checks do (dkimpy with the key record handed
to it, no DNS), one thread, in process. Prints one line per size and algorithm.

    python bench/dkim_bench.py                  # about 20 s
    python bench/dkim_bench.py --seconds 1      # a quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.defer import Deferred  # noqa: E402

from mailstack.checks import DKIMVerifier  # noqa: E402
from mailstack.dkim import DKIMSigner, KeyDirectory, KeyStore  # noqa: E402


def message(size: int) -> bytes:
    head = (b"From: Alice <alice@bench.test>\r\nTo: bob@remote.example\r\nSubject: bench\r\n"
            b"Date: Tue, 01 Dec 2026 00:00:00 +0000\r\nMessage-ID: <m@bench.test>\r\n\r\n")
    # plain text as people write it: single spaces, and two after a full stop (the slower case
    # for relaxed canonicalisation, which must rewrite every run of blanks)
    line = b"The figures for the third quarter are attached.  Please check them by Monday.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def rate(fn, seconds: float) -> float:  # type: ignore[no-untyped-def]
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def verifier(name: str, record: bytes) -> DKIMVerifier:
    """The port-25 verifier, its key lookup answered at once and its blocking work run in place."""

    async def lookup(query: str) -> list[bytes]:
        return [record] if query == name else []

    async def in_place(fn, *args):  # type: ignore[no-untyped-def]
        return fn(*args)

    return DKIMVerifier(lookup, in_place)


def verified(checker: DKIMVerifier, signed: bytes) -> bool:
    found: list[bool] = []
    Deferred.fromCoroutine(checker.verify(signed)).addCallback(
        lambda results: found.append([r.result for r in results] == ["pass"]))
    return found == [True]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=2.5, help="per measurement (default 2.5)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'size':>8} {'algorithm':>9} {'sign msg/s':>11} {'verify msg/s':>13}")
        for algorithm in ("rsa", "ed25519"):
            keys = KeyDirectory(Path(tmp) / algorithm)
            key = keys.generate("bench.test", algorithm, selector="b1")
            signer = DKIMSigner(KeyStore(keys))
            checker = verifier(key.record_name(), key.record_text().encode())
            for size in (4096, 1 << 20):
                body = message(size)
                signed = signer.sign(body)
                assert verified(checker, signed)
                s = rate(lambda body=body, signer=signer: signer.sign(body), args.seconds)
                v = rate(lambda signed=signed, checker=checker: verified(checker, signed), args.seconds)
                print(f"{size:>8} {algorithm:>9} {s:>11.0f} {v:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
