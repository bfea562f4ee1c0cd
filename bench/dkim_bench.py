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

from mailstack.checks.dkim_verify import _verify  # noqa: E402
from mailstack.dkim import DKIMSigner, KeyDirectory, KeyStore  # noqa: E402


def message(size: int) -> bytes:
    head = (b"From: Alice <alice@bench.test>\r\nTo: bob@remote.example\r\nSubject: bench\r\n"
            b"Date: Tue, 01 Dec 2026 00:00:00 +0000\r\nMessage-ID: <m@bench.test>\r\n\r\n")
    line = b"x" * 70 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def rate(fn, seconds: float) -> float:  # type: ignore[no-untyped-def]
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


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
            record = key.record_text().encode()
            name = key.record_name()
            for size in (4096, 1 << 20):
                body = message(size)
                signed = signer.sign(body)
                assert _verify(signed, 0, name, record)
                s = rate(lambda body=body, signer=signer: signer.sign(body), args.seconds)
                v = rate(lambda signed=signed, name=name, record=record: _verify(signed, 0, name, record),
                         args.seconds)
                print(f"{size:>8} {algorithm:>9} {s:>11.0f} {v:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
