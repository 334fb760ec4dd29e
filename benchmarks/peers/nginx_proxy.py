"""Reference (the floor for a proxy): nginx ``proxy_pass`` to an upstream, buffering off.

``python benchmarks/peers/nginx_proxy.py --port P --upstream 127.0.0.1:U [--dir D]`` writes an
nginx.conf into D and execs ``nginx -g 'daemon off;'`` (one worker; the master is the process
the benchmark measures, the worker its child).  Every request is passed to the upstream over
HTTP/1.1 with keep-alive connections (``keepalive`` idle connections cached per worker, no
cap on busy ones) and ``proxy_buffering off``: each read from the upstream is written to the
client at once, as an SSE stream needs.  Used by ``benchmarks/gateway.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

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
    tcp_nodelay on;
    keepalive_timeout 60s;
    keepalive_requests 1000000;
    upstream llm {{
        server {upstream};
        keepalive {keepalive};
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen {host}:{port} backlog=4096 reuseport;
        location / {{
            proxy_pass http://llm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""


def write_config(directory: str, host: str, port: int, upstream: str, keepalive: int) -> str:
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "nginx.conf")
    with open(path, "w") as f:
        f.write(CONF.format(dir=directory, host=host, port=port, upstream=upstream,
                            keepalive=keepalive))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the upstream")
    parser.add_argument("--keepalive", type=int, default=1024,
                        help="idle upstream connections kept per worker")
    parser.add_argument("--dir", default=None, help="config directory (default: a temp dir)")
    parser.add_argument("--print-config", action="store_true",
                        help="write the files, print the config path and exit")
    args = parser.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    directory = os.path.abspath(args.dir or tempfile.mkdtemp(prefix="bench-nginx-proxy-"))
    conf = write_config(directory, args.host, args.port, args.upstream, args.keepalive)
    if args.print_config:
        print(conf)
        return
    os.execv(nginx, [nginx, "-c", conf, "-p", directory, "-e", f"{directory}/error.log"])


if __name__ == "__main__":
    main()
