"""Memory of finished password checks goes back to the system."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys, threading
    from mailstack.accounts.passwords import DEFAULT_HASHER
    from mailstack.memory import return_large_blocks

    if sys.argv[1] == "fixed" and not return_large_blocks():
        print("unsupported"); raise SystemExit
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    stored = DEFAULT_HASHER.hash("secret")
    before = rss()
    def check():
        for _ in range(3):
            DEFAULT_HASHER.verify(stored, "secret")
    threads = [threading.Thread(target=check) for _ in range(2)]  # the auth pool has two
    for t in threads: t.start()
    for t in threads: t.join()
    print((rss() - before) // (1 << 20))
""")


def grown_mib(mode: str) -> str:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_password_checks_on_two_threads_leave_no_memory_behind() -> None:
    grown = grown_mib("fixed")
    if grown == "unsupported":
        pytest.skip("not glibc")
    # Each argon2id check works in 19 MiB; without the fixed threshold two threads kept about 40.
    assert int(grown) < 8
    assert int(grown_mib("default")) >= 19  # the test can tell the difference


def test_collector_pauses_nest_and_end_with_the_last() -> None:
    import gc

    from mailstack.memory import collector_paused

    assert gc.isenabled()
    with collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
