"""``streamcore serve``: the OpenAI-compatible gateway (the embedded synthetic model, or
upstream LLM servers); ``streamcore config --print``: what it would run with.

Every option can also be set by an environment variable (``--token-rate`` is
``STREAMCORE_TOKEN_RATE``) and by a key of a ``--config`` file (:mod:`streamcore.config`):
flag > environment > file > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from .limits import Limits, field_docs
from .sources.synthetic import MAX_ANSWER_TOKENS, SyntheticModel
from .store.base import ReplayStore

ENV_PREFIX = "STREAMCORE_"
#: The distribution's name on the package index ("streamcore" there is another project).
DISTRIBUTION = "streamcore-server"


def version() -> str:
    """The installed distribution's version; the package's own when it is not installed
    (run from a checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(DISTRIBUTION)
    except PackageNotFoundError:
        from . import __version__

        return __version__


def _env_default(name: str, default: object) -> object:
    value = os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"))
    return default if value is None else value


def _add(parser: argparse._ActionsContainer, flag: str, kind: type, default: object,
         help: str) -> None:
    env = ENV_PREFIX + flag.upper().replace("-", "_")
    parser.add_argument(f"--{flag}", type=kind, default=_env_default(flag, default),
                        metavar=kind.__name__.upper(), help=f"{help} [env {env}; %(default)s]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamcore",
        description="A protocol-level LLM token streaming server (HTTP/1.1 SSE and "
                    "WebSocket on asyncio + uvloop).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the OpenAI-compatible streaming gateway",
        description="Serve POST /v1/chat/completions (stream true/false), GET /v1/models and "
                    "GET /healthz, answered by the embedded synthetic model or by upstream "
                    "LLM servers. SIGTERM drains in-flight streams (up to --drain-timeout-s) "
                    "and exits 0; SIGINT stops.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _serve_options(serve)
    config = commands.add_parser(
        "config", help="show the configuration 'serve' would run with",
        description="With --print: the effective configuration (flags, environment, "
                    "--config file and defaults merged), secrets masked, as a file "
                    "--config reads back.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    config.add_argument("--print", action="store_true", dest="print_config",
                        help="print the effective configuration")
    _serve_options(config)
    chaos = commands.add_parser(
        "chaos", help="run a chaos server: the gateway with chaos mode on",
        description="'serve --chaos': the same endpoints and synthetic models (synthetic, "
                    "synthetic-utf8), and every response a request asks for faults by "
                    "X-Chaos or ?chaos= breaks as they say (GET /v1/chaos/faults lists "
                    "them; docs/chaos.md). With --scorecard: run real clients against "
                    "every fault and print what each did (python -m streamcore.scorecard "
                    "takes more options).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _serve_options(chaos)
    chaos.add_argument("--scorecard", action="store_true",
                       help="drive the clients against every fault (on a server of its own) "
                            "and print the table instead of serving")
    return parser


def _serve_options(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--config", metavar="PATH", default=os.environ.get(ENV_PREFIX + "CONFIG"),
                       help="a TOML file of options: every option is a key, without its "
                            "dashes; flag > environment > file > default "
                            "[env STREAMCORE_CONFIG]")
    where = serve.add_argument_group("listening")
    _add(where, "host", str, "127.0.0.1", "address to listen on")
    _add(where, "port", int, 8000, "TCP port (0: any free port)")
    _add(where, "log-level", str, "info", "debug, info, warning or error")
    _add(where, "log-format", str, "text",
         "text, or json: one JSON object per log line (time, level, logger, message)")
    _add(where, "log-prompts", int, 0,
         "1: log each chat request's messages (a 'prompt' line, joined to its stream's "
         "line by completion_id); off by default: prompts are the users' data")
    _add(where, "workers", int, 1,
         "worker processes, each listening on the port (SO_REUSEPORT), supervised: one "
         "that dies is restarted; the server-wide budgets are shared among them")
    model = serve.add_argument_group("synthetic model")
    _add(model, "model", str, "synthetic", "the model name clients ask for")
    _add(model, "first-token-delay", float, 0.0, "seconds before the first token")
    _add(model, "token-rate", float, 50.0, "tokens per second; 0 = unpaced")
    _add(model, "default-tokens", int, 64,
         "answer length (tokens, +0..16 by prompt) when a request sets no max_tokens")
    _add(model, "max-answer-tokens", int, MAX_ANSWER_TOKENS,
         "the largest max_tokens a request may ask for (a larger one is a 400): it bounds "
         "the work one request can cost")
    gateway = serve.add_argument_group(
        "upstream LLM servers (the synthetic model is served only when none is given)")
    gateway.add_argument(
        "--upstream", action="append", metavar="'URL [OPTION=VALUE ...]'", default=None,
        help="an OpenAI-compatible server to route to, by model (repeatable; in order: "
             "the later ones are the fallbacks of the first for a model both serve). "
             "URL: its API base, e.g. http://127.0.0.1:8001/v1. Options, space-separated: "
             "key=KEY, key-env=VARIABLE or key-file=PATH (sent upstream as a Bearer token, "
             "never logged); models=a,b (else asked from its /v1/models); alias=NAME:MODEL "
             "(repeatable); ca-file=PATH (trust this CA for an https upstream). "
             "[env STREAMCORE_UPSTREAM, several separated by ';']")
    access = serve.add_argument_group("who may call")
    _add(access, "cors-origin", str, "",
         "comma-separated origins a browser page may call from (e.g. "
         "https://app.example.com; * for any); preflights answered, X-Stream-Id exposed")
    access.add_argument(
        "--api-key", action="append", metavar="KEY", default=None,
        help="a key clients must send as 'Authorization: Bearer KEY' (repeatable; the "
             "WebSocket handshake too; /healthz and the demo page need none); compared in "
             "constant time, never logged [env STREAMCORE_API_KEY, comma-separated]")
    _add(access, "metrics-public", int, 0,
         "1: GET /metrics needs no API key (default: it needs one when keys are set; "
         "Prometheus sends it with 'authorization: credentials')")
    access.add_argument(
        "--api-key-file", metavar="PATH", default=None,
        help="a file of keys, one per line (blank lines and # comments ignored)")
    sockets = serve.add_argument_group("WebSocket (GET /v1/ws)")
    _add(sockets, "ws-deflate", int, 0, "1: accept permessage-deflate (RFC 7692)")
    _add(sockets, "ws-origins", str, "",
         "comma-separated Origin allow-list (empty: any origin); others get 403")
    tls = serve.add_argument_group("TLS (HTTPS and WSS; both files or neither)")
    _add(tls, "tls-cert", str, "", "PEM certificate chain file; serve HTTPS with --tls-key")
    _add(tls, "tls-key", str, "", "PEM private key file of --tls-cert")
    chaos = serve.add_argument_group("chaos mode (docs/chaos.md)")
    chaos.add_argument(
        "--chaos", type=int, nargs="?", const=1, metavar="1|0",
        default=int(str(_env_default("chaos", 0))),
        help="honour a request's X-Chaos header or chaos query parameter: break its response "
             "on purpose, as the named faults say (GET /v1/chaos/faults). Never on a "
             "production server [env STREAMCORE_CHAOS; %(default)s]")
    _add(chaos, "chaos-faults", str, "",
         "comma-separated faults for every response a request names none for "
         "(/healthz excepted); needs --chaos")
    _add(chaos, "seed", int, -1, "the faults' seed when a request gives no X-Chaos-Seed or "
         "chaos_seed (-1: a new one per response, sent in X-Chaos-Seed)")
    store = serve.add_argument_group("resume store")
    _add(store, "store", str, "memory",
         "where streams are kept for resume: memory (this process), or "
         "redis://HOST:PORT/DB (Redis Streams, shared by processes and nodes; needs the "
         "redis extra: pip install 'streamcore-server[redis]')")
    limits = serve.add_argument_group("limits (every bound, with units)")
    docs = field_docs()
    for field in dataclasses.fields(Limits):
        kind = (float if field.type in ("float", float)
                else str if field.type in ("str", str) else int)
        _add(limits, field.name.replace("_", "-"), kind, field.default,
             docs.get(field.name, ""))


def limits_from(args: argparse.Namespace) -> Limits:
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(Limits)}
    return Limits(**values)


#: Options that may be given several times: (dest, environment variable, its separator).
_LISTS = (("upstream", "UPSTREAM", ";"), ("api_key", "API_KEY", ","))


def parse(argv: Sequence[str] | None = None) -> tuple[argparse.ArgumentParser,
                                                       argparse.Namespace]:
    """Flags, then the environment, then the --config file, then the defaults."""
    from .config import ConfigError, load

    parser = build_parser()
    args = parser.parse_args(argv)
    sub = next(action.choices[args.command] for action in parser._actions
               if isinstance(action, argparse._SubParsersAction))
    file_values: dict[str, object] = {}
    if args.config:
        actions = {action.dest: action for action in sub._actions}
        try:
            file_values = load(args.config, actions)
        except ConfigError as exc:
            sub.error(str(exc))
        defaults = {dest: value for dest, value in file_values.items()
                    if not isinstance(value, list)
                    and ENV_PREFIX + dest.upper() not in os.environ}
        sub.set_defaults(**defaults)
        args = parser.parse_args(argv)
    for dest, env, separator in _LISTS:  # given: flags, else environment, else file
        if getattr(args, dest) is None:
            from_env = [v.strip() for v in os.environ.get(ENV_PREFIX + env, "").split(separator)
                        if v.strip()]
            setattr(args, dest, from_env or file_values.get(dest) or [])
    return sub, args


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = parse(argv)
    if args.command == "config":
        return _print_config(parser, args)
    if args.command == "serve":
        return _serve(parser, args, list(sys.argv[1:] if argv is None else argv))
    if args.command == "chaos":
        if args.scorecard:
            from .scorecard import main as scorecard

            return scorecard([])
        args.chaos = 1
        return _serve(parser, args, list(sys.argv[1:] if argv is None else argv))
    parser.error(f"unknown command {args.command}")
    return 2


def _print_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .config import masked, to_toml

    if not args.print_config:
        parser.error("nothing to do: give --print")
    skip = {"command", "config", "print_config"}
    values = {dest: masked(dest, value) for dest, value in vars(args).items()
              if dest not in skip}
    try:
        values["api_key"] = masked("api_key", _api_keys(args))
    except OSError as exc:
        parser.error(f"--api-key-file: {exc}")
    print(to_toml(values), end="")
    return 0


def _log_setup(level: str, form: str) -> None:
    if form == "json":
        import json
        import time

        class JSONFormatter(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                         + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                         "logger": record.name, "message": record.getMessage()}
                fields = getattr(record, "fields", None)
                if isinstance(fields, dict):  # an access line: its fields, not a sentence
                    del entry["message"]
                    entry.update(fields)
                if record.exc_info:
                    entry["exception"] = self.formatException(record.exc_info)
                return json.dumps(entry, ensure_ascii=False)

        handler = logging.StreamHandler()
        handler.setFormatter(JSONFormatter())
        logging.basicConfig(level=level.upper(), handlers=[handler])
    else:
        logging.basicConfig(level=level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace,
           argv: Sequence[str] = ()) -> int:
    from .aio.server import Server, run
    from .gateway import build_app
    from .workers import share, worker_index

    if args.log_format not in ("text", "json"):
        parser.error(f"--log-format must be text or json, got {args.log_format!r}")
    if args.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        parser.error(f"--log-level must be debug, info, warning or error, got "
                     f"{args.log_level!r}")
    _log_setup(args.log_level, args.log_format)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    worker = worker_index()
    try:
        limits = limits_from(args)
        model = SyntheticModel(name=args.model, first_token_delay_s=args.first_token_delay,
                               tokens_per_s=args.token_rate,
                               default_tokens=args.default_tokens,
                               max_answer_tokens=args.max_answer_tokens)
    except ValueError as exc:
        parser.error(str(exc))
    from .tls import TLSConfigError, context_from_flags
    try:
        tls = context_from_flags(args.tls_cert, args.tls_key)
    except TLSConfigError as exc:
        parser.error(str(exc))
    if tls is not None:
        logging.getLogger("streamcore").info(
            "TLS on (TLS 1.2+, ALPN http/1.1): this server speaks https:// and wss:// only")
    from .sources.upstream_server import Upstream
    try:
        upstreams = [Upstream.parse(spec) for spec in args.upstream]
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    try:
        api_keys = _api_keys(args)
    except OSError as exc:
        parser.error(f"--api-key-file: {exc}")
    try:
        store = store_from(args.store, limits)  # checked before any worker starts
    except (ValueError, RuntimeError) as exc:
        parser.error(str(exc))
    if args.workers > 1 and worker is None:
        return _supervise(args, argv, limits, model, tls is not None,
                          [u.target.url() for u in upstreams])
    if worker is not None:
        limits = share(limits, args.workers)
        store = store_from(args.store, limits)  # each worker its own connections
    cors = [o.strip() for o in args.cors_origin.split(",") if o.strip()]
    chaos = _chaos_of(parser, args)
    models = [model]
    if chaos is not None:  # with multi-byte characters, for the split-utf8 fault
        from .gateway import UTF8Model

        models.append(UTF8Model(first_token_delay_s=model.first_token_delay_s,
                                tokens_per_s=model.tokens_per_s,
                                default_tokens=model.default_tokens,
                                max_answer_tokens=model.max_answer_tokens))
    app = build_app(None if upstreams else models, limits, upstreams=upstreams,
                    cors_origins=cors, api_keys=api_keys, worker=worker, chaos=chaos,
                    metrics_public=bool(args.metrics_public),
                    log_prompts=bool(args.log_prompts))
    if worker is not None:
        from .metrics import Metrics
        from .workers import RUN_DIR_ENV

        run_dir = os.environ.get(RUN_DIR_ENV)
        if run_dir:
            app.metrics = Metrics(run_dir, worker)
    if api_keys:
        logging.getLogger("streamcore").info("clients must present one of %d API keys",
                                             len(api_keys))
    app.ws_deflate = bool(args.ws_deflate)
    if args.ws_origins:
        app.ws_origins = frozenset(o.strip() for o in args.ws_origins.split(",") if o.strip())

    def on_ready(server: Server) -> None:
        print(startup_banner(args.host, server.port, model, tls=tls is not None,
                             upstreams=[u.target.url() for u in upstreams],
                             chaos=chaos is not None), flush=True)

    try:
        if worker is not None:
            from .workers import die_with_parent, reuse_port_socket, tell_ready

            die_with_parent()
            sock = reuse_port_socket(args.host, args.port)
            run(app, args.host, args.port, limits=limits, ssl=tls, sock=sock, store=store,
                on_ready=lambda server: tell_ready(worker))
        else:
            run(app, args.host, args.port, limits=limits, on_ready=on_ready, ssl=tls,
                store=store)
    except OSError as exc:
        print(f"streamcore: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def store_from(spec: str, limits: Limits) -> ReplayStore | None:
    """The store ``--store`` names: None for ``memory`` (the server makes its own), a
    :class:`~streamcore.store.redis_streams.RedisStore` for a ``redis://`` URL.  A
    ValueError for anything else; a RuntimeError when the redis extra is missing."""
    if spec == "memory":
        return None
    if not spec.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"--store must be memory or redis://HOST:PORT/DB, got {spec!r}")
    from .store.redis_streams import RedisStore, redis_module

    redis_module()  # the extra is installed, or a clear error now rather than at the first stream
    return RedisStore(spec, limits)


def _supervise(args: argparse.Namespace, argv: Sequence[str], limits: Limits,
               model: SyntheticModel, tls: bool, upstreams: list[str]) -> int:
    """``--workers N``: this process supervises N workers (:mod:`streamcore.workers`)."""
    from .workers import Supervisor

    try:
        supervisor = Supervisor(argv, args.host, args.port, args.workers, limits)
    except OSError as exc:
        print(f"streamcore: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    def on_ready(port: int) -> None:
        print(startup_banner(args.host, port, model, tls=tls, upstreams=upstreams),
              flush=True)

    return supervisor.run(on_ready)


def _chaos_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Any:
    """Chaos mode's settings (``--chaos``, ``--chaos-faults``, ``--seed``), or None."""
    from .errors import RequestError
    from .proto.chaos import Chaos

    faults = tuple(f.strip() for f in args.chaos_faults.split(",") if f.strip())
    if not args.chaos:
        if faults:
            parser.error("--chaos-faults needs --chaos")
        return None
    logging.getLogger("streamcore").warning(
        "chaos mode: requests may ask for broken responses (X-Chaos); not for production")
    try:
        return Chaos(faults, args.seed if args.seed >= 0 else None)
    except RequestError as exc:
        parser.error(f"--chaos-faults: {exc.message}")


def _api_keys(args: argparse.Namespace) -> list[str]:
    """The keys from --api-key, --api-key-file and STREAMCORE_API_KEY, in that order."""
    keys = list(args.api_key)
    if args.api_key_file:
        with open(args.api_key_file) as f:
            keys += [line.strip() for line in f
                     if line.strip() and not line.lstrip().startswith("#")]
    return keys


#: What ``streamcore serve`` serves, for the startup banner: (method, path, what).
ENDPOINTS = (
    ("GET", "/", "the demo page: open it in a browser"),
    ("POST", "/v1/chat/completions", 'OpenAI chat completions (SSE with "stream": true)'),
    ("GET", "/v1/streams/{id}", "read or resume a stream (Last-Event-ID)"),
    ("GET", "/v1/ws", "the same streams over WebSocket"),
    ("GET", "/v1/models", "the models"),
    ("GET", "/healthz", "liveness"),
    ("GET", "/v1/streams", "the stream inspector (DELETE /v1/streams/{id} stops one)"),
    ("GET", "/metrics", "Prometheus metrics"),
)


def startup_banner(host: str, port: int, model: SyntheticModel, *, tls: bool = False,
                   upstreams: Sequence[str] = (), chaos: bool = False) -> str:
    """The lines ``streamcore serve`` prints once it listens: where to point a client."""
    address = f"[{host}]" if ":" in host else host
    base = f"{'https' if tls else 'http'}://{address}:{port}"
    if upstreams:
        what = "the models of " + ", ".join(upstreams)
    else:
        rate = (f"{model.tokens_per_s:g} tokens/s" if model.tokens_per_s > 0
                else "unpaced")
        what = f"model {model.name!r} ({rate})"
    lines = [f"streamcore {version()} serving {what} on {base}"]
    endpoints = ENDPOINTS + ((("GET", "/v1/chaos/faults",
                               "chaos mode's faults (X-Chaos: NAME,...)"),) if chaos else ())
    for method, path, what in endpoints:
        url = ("ws" + base[4:] if path == "/v1/ws" else base) + path  # wss for https
        lines.append(f"  {method:<4} {url:<{len(base) + 22}}  {what}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
