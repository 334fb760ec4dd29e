"""Reference (the ceiling): nginx serving the identical SSE body from a static file.

``python benchmarks/peers/nginx_static.py --port P [--tokens T] [--dir D]`` writes the SSE
body of a T-token answer (role chunk, T content chunks, finish chunk, ``data: [DONE]``) and
an nginx.conf into D, then execs ``nginx -g 'daemon off;'`` (one worker; the master is the
process the runner measures, the worker its child).  nginx's static module refuses POST with
405, so ``error_page 405 =200`` answers the POST with the file (nginx turns the internal
redirect into a GET and discards the request body).  There is no pacing: nginx is only a
reference for workload A.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import DONE, FINISH, ROLE, TOKEN, chunk, sse_event

CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 19500;
events {{
    worker_connections 19000;
    use epoll;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 60s;
    keepalive_requests 1000000;
    types {{ }}
    default_type text/event-stream;
    server {{
        listen {host}:{port} backlog=4096 reuseport;
        root {dir}/www;
        location = /v1/chat/completions {{
            alias {dir}/www/sse/{tokens}.sse;
            error_page 405 =200 /sse/{tokens}.sse;
        }}
        location /sse/ {{
            add_header Cache-Control no-cache;
        }}
    }}
}}
"""


def body(tokens: int) -> bytes:
    event = sse_event(chunk(TOKEN))
    return sse_event(ROLE) + event * tokens + sse_event(FINISH) + sse_event(DONE)


def write_config(directory: str, host: str, port: int, tokens: int) -> str:
    os.makedirs(os.path.join(directory, "www", "sse"), exist_ok=True)
    with open(os.path.join(directory, "www", "sse", f"{tokens}.sse"), "wb") as f:
        f.write(body(tokens))
    # nginx's worker runs as an unprivileged user: it must be able to read the body.
    for root, _dirs, files in os.walk(directory):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    path = os.path.join(directory, "nginx.conf")
    with open(path, "w") as f:
        f.write(CONF.format(dir=directory, host=host, port=port, tokens=tokens))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--token-rate", type=float, default=0.0,
                        help="must be 0: nginx cannot pace")
    parser.add_argument("--dir", default=None, help="config directory (default: a temp dir)")
    parser.add_argument("--print-config", action="store_true",
                        help="write the files, print the config path and exit")
    args = parser.parse_args()
    if args.token_rate:
        parser.error("nginx serves a static file: it cannot pace (--token-rate must be 0)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    directory = os.path.abspath(args.dir or tempfile.mkdtemp(prefix="bench-nginx-"))
    conf = write_config(directory, args.host, args.port, args.tokens)
    if args.print_config:
        print(conf)
        return
    os.execv(nginx, [nginx, "-c", conf, "-p", directory, "-e", f"{directory}/error.log"])


if __name__ == "__main__":
    main()
