"""Peer: the raw ASGI app on uvicorn's pure-Python protocols, h11 for HTTP and wsproto for
WebSocket, on uvloop."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import uvicorn
from common import parse_args

if __name__ == "__main__":
    args = parse_args(__doc__)
    from asgi_app import app

    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="h11", ws="wsproto",
                lifespan="on", log_level="warning", access_log=False, backlog=4096,
                timeout_keep_alive=30)
