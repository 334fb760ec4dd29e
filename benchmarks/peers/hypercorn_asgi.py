"""Peer: the raw ASGI app on hypercorn (h11 + wsproto), asyncio worker on uvloop."""

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import uvloop
from common import parse_args
from hypercorn.asyncio import serve
from hypercorn.config import Config

if __name__ == "__main__":
    args = parse_args(__doc__)
    from asgi_app import app

    config = Config()
    config.bind = [f"{args.host}:{args.port}"]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    config.backlog = 4096
    config.keep_alive_timeout = 30
    uvloop.install()
    asyncio.run(serve(app, config))
