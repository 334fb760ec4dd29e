"""Peer: the raw ASGI app on granian (Rust HTTP/WebSocket, one worker, uvloop).  Its
default backpressure (backlog / workers concurrent requests) would cap workload C, so it is
raised."""

import os
import sys
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import parse_args  # noqa: E402

if __name__ == "__main__":
    args = parse_args(__doc__)
    os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")
    from granian import Granian
    from granian.constants import Interfaces, Loops

    Granian("asgi_app:app", address=args.host, port=args.port, interface=Interfaces.ASGI,
            workers=1, runtime_threads=1, loop=Loops.uvloop, backlog=4096, backpressure=100_000,
            log_level="warning",
            log_access=False, working_dir=Path(HERE)).serve()
