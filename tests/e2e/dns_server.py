"""Run an authoritative test DNS server on 127.0.0.1 until SIGTERM.

``python dns_server.py ZONES.json PORTFILE``: serves the zones (the format of
``mailstack.testing_dns``) on a free UDP+TCP port and writes the port number to
PORTFILE once it is listening.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from twisted.internet import reactor

from mailstack.testing_dns import AuthoritativeDNS


def main() -> None:
    zones = json.loads(Path(sys.argv[1]).read_text())
    server = AuthoritativeDNS(zones)
    port = server.start(reactor)
    tmp = Path(sys.argv[2] + ".tmp")
    tmp.write_text(str(port))
    tmp.rename(sys.argv[2])
    reactor.run()


if __name__ == "__main__":
    main()
