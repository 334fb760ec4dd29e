"""The benchmark runner: streamcore against the Python streaming servers people choose.

Every server under test runs on loopback pinned to CPU 0 (``taskset -c 0``); the load
generator (wrk, or ``benchmarks/loadgen.py``) and this runner on CPU 1.  Each server's
output is validated as a correct stream before it is measured.  Per run the runner records
the server's CPU time (``/proc/PID/stat`` utime+stime of the process tree, reaped children
included) per token, tokens/s, latencies, RSS, and whether anything else loaded the machine
(busy time in ``/proc/stat`` on either core beyond what the server, the load generator and
the runner account for, or steal).  Results go to ``benchmarks/out/*.json``; the tables are
printed (``--report FILE`` prints them again; ``benchmarks/report.py`` also draws the plots).

Workloads:

A  throughput: unpaced T-token streams back to back on C connections (wrk + Lua for SSE when
   wrk is installed, else loadgen; loadgen for WebSocket).
B  paced: N streams at 20 tokens/s; lateness of every chunk against the ideal schedule, TTFB.
C  idle: N open streams (the server paced at one token per 20 s): server RSS per connection.
D  slow reader: K clients that read nothing while the server streams: RSS growth and CPU.

Examples::

    python benchmarks/run.py --workloads A --concurrency 64 --runs 3
    python benchmarks/run.py --servers streamcore,uvicorn_asgi --workloads B --paced-streams 1000
    python benchmarks/run.py --quick            # the CI smoke: a few seconds, no judgement
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.path.join(HERE, "peers")
sys.path.insert(0, HERE)

import procstat  # noqa: E402

PY = sys.executable
SERVER_CPU = 0
LOAD_CPU = 1
#: Busy time on a core not accounted for by our processes, as a share of the run's wall
#: time, above which the run is flagged as disturbed.
LOADED_SHARE = 0.05
#: Above this share of one core the load generator itself may have been the bottleneck.
CLIENT_BOUND = 0.90
#: Server paced at one token per 20 s for workload C: streams that are open and idle.
IDLE_RATE = 0.05


@dataclass
class Server:
    name: str
    #: The command; ``{port}``, ``{rate}``, ``{tokens}`` and ``{dir}`` are filled in.
    cmd: list[str]
    protos: tuple[str, ...]
    label: str
    paced: bool = True
    needs: tuple[str, ...] = ()  # Python modules or executables ("bin:nginx")
    env: dict[str, str] = field(default_factory=dict)
    #: Working directory (streamcore: the tree to measure, see --streamcore-ref).
    cwd: str = ROOT


def _peer(file: str) -> list[str]:
    return [PY, os.path.join(PEERS, file), "--host", "127.0.0.1", "--port", "{port}",
            "--token-rate", "{rate}"]


SERVERS: dict[str, Server] = {s.name: s for s in [
    Server("streamcore",
           [PY, "-m", "streamcore", "serve", "--host", "127.0.0.1", "--port", "{port}",
            "--token-rate", "{rate}", "--first-token-delay", "0", "--default-tokens", "1000000",
            "--max-answer-tokens", "1000000",
            "--max-connections", "200000", "--max-connections-per-ip", "0",
            "--log-level", "warning"],
           ("sse", "ws"), "streamcore (uvloop, h11/wsproto)", needs=("streamcore",)),
    Server("streamcore_user", _peer("streamcore_user.py"), ("sse", "ws"),
           "streamcore, a user's @app.stream / @app.websocket handler",
           needs=("streamcore",)),
    Server("raw_asyncio", _peer("raw_asyncio.py"), ("sse", "ws"),
           "raw asyncio.Protocol, pre-encoded (floor)", needs=("uvloop",)),
    Server("nginx", [PY, os.path.join(PEERS, "nginx_static.py"), "--host", "127.0.0.1",
                     "--port", "{port}", "--tokens", "{tokens}", "--dir", "{dir}"],
           ("sse",), "nginx static file (ceiling)", paced=False, needs=("bin:nginx",)),
    Server("fastapi_sse", _peer("fastapi_sse.py"), ("sse",),
           "FastAPI + sse-starlette on uvicorn",
           needs=("fastapi", "sse_starlette", "uvicorn", "httptools")),
    Server("uvicorn_asgi", _peer("uvicorn_asgi.py"), ("sse", "ws"),
           "uvicorn raw ASGI (httptools, websockets)", needs=("uvicorn", "httptools",
                                                                 "websockets")),
    Server("uvicorn_h11", _peer("uvicorn_h11.py"), ("sse", "ws"),
           "uvicorn raw ASGI (h11, wsproto)", needs=("uvicorn", "h11", "wsproto")),
    Server("hypercorn", _peer("hypercorn_asgi.py"), ("sse", "ws"),
           "hypercorn raw ASGI", needs=("hypercorn",)),
    Server("granian", _peer("granian_asgi.py"), ("sse", "ws"),
           "granian raw ASGI", needs=("granian",)),
    Server("aiohttp", _peer("aiohttp_server.py"), ("sse", "ws"), "aiohttp.web",
           needs=("aiohttp",)),
    Server("websockets", _peer("websockets_server.py"), ("ws",), "websockets library",
           needs=("websockets",)),
    Server("picows", _peer("picows_server.py"), ("ws",), "picows", needs=("picows",)),
]}


def missing_needs(server: Server) -> list[str]:
    import importlib.util

    out = []
    for need in server.needs:
        if need.startswith("bin:"):
            if shutil.which(need[4:]) is None and not os.path.exists(f"/usr/sbin/{need[4:]}"):
                out.append(need[4:])
        elif importlib.util.find_spec(need) is None:
            out.append(need)
    return out


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


def _raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _preexec(cpu: int | None):
    def run() -> None:
        _raise_nofile()
        if cpu is not None and shutil.which("taskset") is None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {cpu})
    return run


class Running:
    """A server under test, started in its own process group."""

    def __init__(self, server: Server, rate: float, tokens: int, out_dir: str,
                 cpu: int | None) -> None:
        self.server = server
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"bench-{server.name}-")
        values = {"port": str(self.port), "rate": f"{rate:g}", "tokens": str(tokens),
                  "dir": self.dir}
        cmd = [part.format(**values) for part in server.cmd]
        if "--max-answer-tokens" in cmd and not _knows_flag(server.cwd, "max-answer-tokens"):
            # A tree from before the flag (a --streamcore-ref measured as "before"): its
            # synthetic model had no answer cap to lift.
            at = cmd.index("--max-answer-tokens")
            del cmd[at:at + 2]
        if "--max-connections-per-ip" in cmd and not _knows_limit(server.cwd,
                                                                  "max_connections_per_ip"):
            at = cmd.index("--max-connections-per-ip")  # a tree from before the cap
            del cmd[at:at + 2]
        self.cmd = pinned(cmd, cpu)
        self.log_path = os.path.join(out_dir, f"server-{server.name}.log")
        env = dict(os.environ, PYTHONPATH=server.cwd + os.pathsep +
                   os.environ.get("PYTHONPATH", ""), **server.env)
        self.log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=server.cwd, env=env, start_new_session=True,
                                     preexec_fn=_preexec(cpu))
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5):
                # Listening: workers that come up later find the connections in the backlog.
                return True
            time.sleep(0.1)
        return False

    def pids(self) -> list[int]:
        return procstat.tree(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Workers that outlived their parent are still in our process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def tail(self, n: int = 15) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        return ""


def run_child(cmd: list[str], timeout: float) -> tuple[int, str, float, float]:
    """(exit status, stdout, CPU seconds of the child, wall seconds)."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                preexec_fn=_raise_nofile)
        deadline = t0 + timeout
        status, usage = 0, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return proc.returncode, text, usage.ru_utime + usage.ru_stime, time.monotonic() - t0


def loadgen_cmd(mode: str, port: int, proto: str, **opts: Any) -> list[str]:
    cmd = [PY, os.path.join(HERE, "loadgen.py"), mode, "--port", str(port), "--proto", proto]
    for key, value in opts.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    return pinned(cmd, LOAD_CPU_PIN)


def parse_json_out(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON in the load generator's output: {text[-500:]}")
    return json.loads(text[start:text.rindex("}") + 1])


# -- one measured run --------------------------------------------------------------------


class Meter:
    """Server CPU, per-core busy time and our own CPU around one run."""

    def __init__(self, server: Running) -> None:
        self.server = server

    def __enter__(self) -> Meter:
        self.pids = self.server.pids()
        self.cores0 = procstat.core_times()
        self.cpu0 = procstat.cpu_seconds(self.server.pid, self.pids)
        self.self0 = _self_cpu()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.monotonic() - self.t0
        # Workers may have appeared during the run: measure the tree as it is now.
        pids = sorted(set(self.pids) | set(self.server.pids()))
        self.server_cpu = procstat.cpu_seconds(self.server.pid, pids) - self.cpu0
        self.self_cpu = _self_cpu() - self.self0
        self.cores = procstat.core_delta(self.cores0, procstat.core_times())

    def machine(self, client_cpu: float) -> dict[str, Any]:
        """Who else was busy: per-core work minus what our processes account for."""
        wall = max(self.wall, 1e-9)
        work = self.cores["work"]
        out: dict[str, Any] = {"wall_s": self.wall, "server_cpu_s": self.server_cpu,
                               "client_cpu_s": client_cpu, "runner_cpu_s": self.self_cpu}
        if SERVER_CPU_PIN is not None and len(work) >= 2:
            other0 = work[SERVER_CPU] - self.server_cpu
            other1 = work[LOAD_CPU] - client_cpu - self.self_cpu
            out["other_busy_share"] = {"cpu0": other0 / wall, "cpu1": other1 / wall}
        else:
            other = sum(work.values()) - self.server_cpu - client_cpu - self.self_cpu
            out["other_busy_share"] = {"all": other / wall}
        out["irq_share"] = {f"cpu{c}": v / wall for c, v in self.cores["irq"].items()}
        steal = sum(self.cores["steal"].values()) / wall
        out["steal_share"] = steal
        reasons = [f"{core} {share:.0%} busy with other work"
                   for core, share in out["other_busy_share"].items() if share > LOADED_SHARE]
        if steal > LOADED_SHARE:
            reasons.append(f"steal {steal:.0%}")
        out["loaded"] = bool(reasons)
        out["loaded_why"] = reasons
        return out


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure_a(srv: Running, proto: str, conc: int, tokens: int, duration: float,
              use_wrk: bool, response_bytes: int) -> dict[str, Any]:
    if proto == "sse" and use_wrk:
        url = f"http://127.0.0.1:{srv.port}/v1/chat/completions"
        cmd = pinned(["wrk", "-t1", f"-c{conc}", f"-d{max(1, round(duration))}s",
                      "--timeout", "60s", "-s", os.path.join(HERE, "wrk", "post.lua"), url,
                      "--", str(tokens)], LOAD_CPU_PIN)
        tool = "wrk"
    else:
        cmd = loadgen_cmd("throughput", srv.port, proto, concurrency=conc, tokens=tokens,
                          duration=duration)
        tool = "loadgen"
    with Meter(srv) as meter:
        status, text, client_cpu, _ = run_child(cmd, duration + 60)
    result: dict[str, Any] = {"tool": tool, "load_cmd": shlex.join(cmd)}
    if status != 0:
        return {**result, "error": f"load generator exit {status}: {text[-800:]}"}
    if tool == "wrk":
        line = next((x for x in text.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            return {**result, "error": f"no WRKJSON line in wrk's output: {text[-800:]}"}
        w = json.loads(line[len("WRKJSON "):])
        # Bytes read over one response's size: streams cut at the end count in part.
        toks = w["bytes"] * tokens / response_bytes
        wall = w["duration_us"] / 1e6
        errors = {k: v for k, v in w["errors"].items() if v}
        result.update(tokens=toks, tokens_per_s=toks / wall, streams_done=w["requests"],
                      stream_p50_s=w["latency_us"]["p50"] / 1e6,
                      stream_p99_s=w["latency_us"]["p99"] / 1e6, errors=errors,
                      client_cpu_util=client_cpu / max(meter.wall, 1e-9))
    else:
        g = parse_json_out(text)
        result.update(tokens=g["tokens"], tokens_per_s=g["tokens_per_s"],
                      streams_done=g["streams_done"],
                      stream_p50_s=g["stream_time_s"].get("p50"),
                      stream_p99_s=g["stream_time_s"].get("p99"),
                      ttfb_p50_s=g["ttfb_s"].get("p50"), ttfb_p99_s=g["ttfb_s"].get("p99"),
                      errors=g["errors"], client_cpu_util=g["client_cpu_util"])
    result.update(meter.machine(client_cpu))
    toks = result["tokens"] or 0
    result["server_cpu_us_per_token"] = meter.server_cpu / toks * 1e6 if toks else None
    result["server_cpu_util"] = meter.server_cpu / max(meter.wall, 1e-9)
    result["server_rss"] = procstat.rss_bytes(srv.pid)
    result["client_bound"] = result["client_cpu_util"] > CLIENT_BOUND
    return result


def measure_b(srv: Running, proto: str, streams: int, tokens: int, rate: float,
              ramp: float, t0: str = "request") -> dict[str, Any]:
    cmd = loadgen_cmd("paced", srv.port, proto, concurrency=streams, tokens=tokens, rate=rate,
                      ramp=ramp, t0=t0)
    with Meter(srv) as meter:
        status, text, client_cpu, _ = run_child(cmd, tokens / rate + ramp + 90)
    result: dict[str, Any] = {"tool": "loadgen", "load_cmd": shlex.join(cmd)}
    if status != 0:
        return {**result, "error": f"load generator exit {status}: {text[-800:]}"}
    g = parse_json_out(text)
    late = g.get("lateness_s", {})
    result.update(tokens=g["tokens"], tokens_per_s=g["tokens_per_s"],
                  expected_tokens=streams * tokens, streams_done=g["streams_done"],
                  lateness_p50_s=late.get("p50"), lateness_p99_s=late.get("p99"),
                  lateness_p999_s=late.get("p99.9"), lateness_max_s=late.get("max"),
                  jitter_p50_s=g.get("jitter_s", {}).get("p50"),
                  jitter_p99_s=g.get("jitter_s", {}).get("p99"), ramp_s=ramp,
                  ttfb_p50_s=g["ttfb_s"].get("p50"), ttfb_p99_s=g["ttfb_s"].get("p99"),
                  ttft_p50_s=g["ttft_s"].get("p50"), ttft_p99_s=g["ttft_s"].get("p99"),
                  errors=g["errors"], client_cpu_util=g["client_cpu_util"])
    result.update(meter.machine(client_cpu))
    toks = result["tokens"] or 0
    result["server_cpu_us_per_token"] = meter.server_cpu / toks * 1e6 if toks else None
    result["server_cpu_util"] = meter.server_cpu / max(meter.wall, 1e-9)
    result["server_rss"] = procstat.rss_bytes(srv.pid)
    result["client_bound"] = result["client_cpu_util"] > CLIENT_BOUND
    return result


def measure_c(srv: Running, proto: str, streams: int, hold: float) -> dict[str, Any]:
    cmd = loadgen_cmd("idle", srv.port, proto, concurrency=streams, tokens=2, hold=hold,
                      server_pid=srv.pid)
    with Meter(srv) as meter:
        status, text, client_cpu, _ = run_child(cmd, hold + 150)
    result: dict[str, Any] = {"tool": "loadgen", "load_cmd": shlex.join(cmd)}
    if status != 0:
        return {**result, "error": f"load generator exit {status}: {text[-800:]}"}
    g = parse_json_out(text)
    result.update({k: g[k] for k in ("connections", "streams_open", "still_open_after_hold",
                                      "open_s", "rss_before", "rss_open", "rss_after_hold",
                                      "rss_per_conn", "idle_cpu_util", "errors", "tokens",
                                      "rss_after_close", "rss_kept_per_closed_conn")})
    result.update(meter.machine(client_cpu))
    return result


def measure_d(srv: Running, proto: str, clients: int, duration: float) -> dict[str, Any]:
    cmd = loadgen_cmd("slow", srv.port, proto, concurrency=clients, tokens=1_000_000,
                      duration=duration, server_pid=srv.pid)
    with Meter(srv) as meter:
        status, text, client_cpu, _ = run_child(cmd, duration + 60)
    result: dict[str, Any] = {"tool": "loadgen", "load_cmd": shlex.join(cmd)}
    if status != 0:
        return {**result, "error": f"load generator exit {status}: {text[-800:]}"}
    g = parse_json_out(text)
    result.update({k: g[k] for k in ("clients", "rss_before", "rss_end", "rss_growth",
                                      "rss_growth_per_conn", "rss_peak", "cpu_s",
                                      "cpu_util_second_half", "closed_by_server", "samples")})
    result.update(meter.machine(client_cpu))
    return result


# -- orchestration ------------------------------------------------------------------------


def validate(srv: Running, proto: str, tokens: int) -> dict[str, Any]:
    cmd = loadgen_cmd("validate", srv.port, proto, tokens=tokens)
    status, text, _, _ = run_child(cmd, 60)
    try:
        return parse_json_out(text)
    except ValueError:
        return {"ok": False, "error": f"validator exit {status}: {text[-800:]}"}


def wait_quiet(args: argparse.Namespace, log: Any) -> float:
    """Before a run: wait (up to --wait-quiet s) until the machine is quiet, that is the
    cores' busy time over 0.5 s is below 2 x LOADED_SHARE of one core (our idle server and
    this runner included).  Returns the seconds waited."""
    if args.wait_quiet <= 0:
        return 0.0
    t0 = time.monotonic()
    said = False
    while True:
        a = procstat.core_times()
        time.sleep(0.5)
        busy = sum(procstat.core_delta(a, procstat.core_times())["work"].values()) / 0.5
        waited = time.monotonic() - t0
        if busy < 2 * LOADED_SHARE or waited > args.wait_quiet:
            if said:
                log(f"      waited {waited:.0f}s for a quiet machine (busy {busy:.0%})")
            return waited
        if not said:
            log(f"      machine busy ({busy:.0%} of a core): waiting up to "
                f"{args.wait_quiet:.0f}s")
            said = True
        time.sleep(1.5)


def with_retries(measure: Any, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """A run that other work disturbed is repeated (up to --retry-loaded times); the
    flagged attempts are kept in the record."""
    waited = wait_quiet(args, log)
    result = measure()
    result["waited_for_quiet_s"] = waited
    attempts = [result]
    for _ in range(args.retry_loaded):
        if not result.get("loaded") or "error" in result:
            break
        log(f"      disturbed ({', '.join(result['loaded_why'])}): again")
        time.sleep(1.0)
        waited = wait_quiet(args, log)
        result = measure()
        result["waited_for_quiet_s"] = waited
        attempts.append(result)
    if len(attempts) > 1:
        result["disturbed_attempts"] = [
            {k: a.get(k) for k in ("loaded_why", "tokens_per_s", "server_cpu_us_per_token")}
            for a in attempts[:-1]]
    return result


def run_workload(workload: str, server: Server, args: argparse.Namespace, use_wrk: bool,
                 results: list[dict[str, Any]], log: Any) -> None:
    protos = [p for p in server.protos if p in args.protos]
    if not protos:
        return
    if workload in "BC" and not server.paced:
        log(f"  {server.name}: cannot pace, skipped for {workload}")
        return
    if workload == "D" and server.name == "nginx":
        log("  nginx: a static file, no slow-reader test")
        return
    rate = {"A": 0.0, "B": args.rate, "C": IDLE_RATE, "D": 0.0}[workload]
    srv = Running(server, rate, args.tokens, args.out_dir, SERVER_CPU_PIN)
    base = {"workload": workload, "server": server.name, "label": server.label,
            "server_cmd": shlex.join(srv.cmd), "rate": rate}
    try:
        if not srv.wait_ready():
            log(f"  {server.name}: did not start:\n{srv.tail()}")
            results.append({**base, "error": "server did not start", "log": srv.tail()})
            return
        base["rss_idle"] = procstat.rss_bytes(srv.pid)
        for proto in protos:
            vtokens = args.tokens if workload == "A" else 1 if workload == "C" else 5
            if workload == "B":
                vtokens = 3
            v = validate(srv, proto, vtokens)
            if not v.get("ok"):
                if proto == "ws" and "handshake answered 404" in str(v.get("error")):
                    log(f"  {server.name}/ws: no WebSocket route (404): skipped")
                else:
                    log(f"  {server.name}/{proto}: INVALID stream: {v.get('error')}")
                results.append({**base, "proto": proto, "error": "invalid stream",
                                "validation": v})
                continue
            log(f"  {server.name}/{proto}: valid stream ({vtokens} tokens)")
            if workload == "A":
                # Warm up (imports, allocator, JITless caches) without measuring.
                measure_a(srv, proto, min(64, max(args.concurrency)), args.tokens,
                          args.warmup, use_wrk, v["response_bytes"])
                for conc in args.concurrency:
                    for i in range(args.runs):
                        r = with_retries(partial(
                            measure_a, srv, proto, conc, args.tokens, args.duration, use_wrk,
                            v["response_bytes"]), args, log)
                        results.append({**base, "proto": proto, "concurrency": conc,
                                        "tokens_per_stream": args.tokens, "run": i, **r})
                        log_run(log, results[-1])
            elif workload == "B":
                for n in args.paced_streams:
                    ramp = args.ramp or min(2.5, n / 1000)
                    for i in range(args.runs):
                        r = with_retries(partial(
                            measure_b, srv, proto, n, args.paced_tokens, args.rate, ramp,
                            args.paced_t0),
                            args, log)
                        results.append({**base, "proto": proto, "concurrency": n,
                                        "tokens_per_stream": args.paced_tokens, "run": i, **r})
                        log_run(log, results[-1])
            elif workload == "C":
                # Memory is measured on a fresh server each time: what an earlier run left
                # in the allocator (or retained for resume) would hide the growth.
                for i in range(args.runs):
                    r = with_retries(partial(on_fresh_server, server, rate, args, measure_c,
                                             proto, args.idle_streams, args.hold), args, log)
                    results.append({**base, "proto": proto, "concurrency": args.idle_streams,
                                    "run": i, **r})
                    log_run(log, results[-1])
            elif workload == "D":
                for i in range(args.runs):
                    r = with_retries(partial(on_fresh_server, server, rate, args, measure_d,
                                             proto, args.slow_clients, args.slow_duration),
                                     args, log)
                    results.append({**base, "proto": proto, "concurrency": args.slow_clients,
                                    "run": i, **r})
                    log_run(log, results[-1])
            if srv.proc.poll() is not None:
                log(f"  {server.name}: the server died:\n{srv.tail()}")
                break
    finally:
        srv.stop()


def on_fresh_server(server: Server, rate: float, args: argparse.Namespace, measure: Any,
                    *params: Any) -> dict[str, Any]:
    """Start a new instance of the server, measure on it, stop it."""
    srv = Running(server, rate, args.tokens, args.out_dir, SERVER_CPU_PIN)
    try:
        if not srv.wait_ready():
            return {"error": "server did not start", "log": srv.tail()}
        time.sleep(0.3)
        result: dict[str, Any] = measure(srv, *params)
        result["server_alive_after"] = srv.proc.poll() is None
        return result
    finally:
        srv.stop()


def log_run(log: Any, r: dict[str, Any]) -> None:
    head = f"    {r['workload']} {r['server']}/{r['proto']} c={r.get('concurrency')} " \
           f"run {r.get('run')}:"
    if "error" in r:
        log(f"{head} ERROR {r['error']}")
        return
    flag = "  [LOADED: " + "; ".join(r["loaded_why"]) + "]" if r.get("loaded") else ""
    if r.get("client_bound"):
        flag += "  [CLIENT-BOUND]"
    if r["workload"] == "A":
        cpt = r["server_cpu_us_per_token"]
        p99 = r.get("stream_p99_s")
        log(f"{head} {r['tokens_per_s']:,.0f} tok/s, "
            f"{'-' if cpt is None else f'{cpt:.2f}'} µs CPU/token, server "
            f"{r['server_cpu_util']:.0%}, client {r['client_cpu_util']:.0%}, p99 stream "
            f"{'-' if p99 is None else f'{p99:.3f}s'} {r['errors'] or ''}{flag}")
    elif r["workload"] == "B":
        cpt = r["server_cpu_us_per_token"]
        log(f"{head} {r['tokens']}/{r['expected_tokens']} tokens, lateness p50 "
            f"{_ms(r['lateness_p50_s'])} p99 {_ms(r['lateness_p99_s'])}, ttfb p99 "
            f"{_ms(r['ttfb_p99_s'])}, {cpt and round(cpt, 2)} µs/token, server "
            f"{r['server_cpu_util']:.0%}, client {r['client_cpu_util']:.0%} "
            f"{r['errors'] or ''}{flag}")
    elif r["workload"] == "C":
        log(f"{head} {r['streams_open']}/{r['concurrency']} open, "
            f"{r['rss_per_conn'] / 1024:.1f} KiB/conn, idle CPU {r['idle_cpu_util']:.1%} "
            f"{r['errors'] or ''}{flag}")
    elif r["workload"] == "D":
        log(f"{head} RSS +{r['rss_growth'] / 2**20:.1f} MiB "
            f"({r['rss_growth_per_conn'] / 1024:.0f} KiB/conn), CPU 2nd half "
            f"{r['cpu_util_second_half']:.1%}, closed by server {r['closed_by_server']}"
            f"{flag}")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}ms"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"kernel": platform.release(), "python": platform.python_version(),
                            "cpus": os.cpu_count(), "hostname_hidden": True}
    with contextlib.suppress(Exception):
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "Hypervisor vendor", "CPU(s)", "CPU MHz"):
                info[key.strip()] = value.strip()
    with contextlib.suppress(Exception), open("/proc/meminfo") as f:
        info["mem_total_kb"] = int(f.readline().split()[1])
    versions = {}
    for mod in ("uvloop", "uvicorn", "starlette", "sse_starlette", "fastapi", "hypercorn",
                "aiohttp", "granian", "picows", "websockets", "h11", "wsproto", "httptools",
                "orjson"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[mod] = version(mod.replace("_", "-"))
    for tool, flag in (("wrk", "--version"), ("nginx", "-v")):
        with contextlib.suppress(Exception):
            p = subprocess.run([tool, flag], capture_output=True, text=True)
            versions[tool] = (p.stdout + p.stderr).strip().splitlines()[0]
    info["versions"] = versions
    with contextlib.suppress(Exception):
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                     capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "streamcore"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        info["streamcore_tree_dirty"] = bool(dirty)
    return info


def _knows_limit(tree: str, name: str) -> bool:
    """Whether ``tree``'s Limits has the field ``name`` (each is a CLI flag)."""
    try:
        with open(os.path.join(tree, "streamcore", "limits.py")) as f:
            return f"    {name}:" in f.read()
    except OSError:
        return True


def _knows_flag(tree: str, flag: str) -> bool:
    """Whether the streamcore CLI in ``tree`` has ``--flag``."""
    cli = os.path.join(tree, "streamcore", "cli.py")
    try:
        with open(cli) as f:
            return f'"{flag}"' in f.read()
    except OSError:
        return True


def snapshot(ref: str) -> tuple[str, str]:
    """``git archive REF`` of streamcore/ into a temp dir: a fixed tree to measure while
    others edit the working tree.  Returns (directory, commit)."""
    commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    directory = tempfile.mkdtemp(prefix=f"bench-streamcore-{commit}-")
    archive = subprocess.run(["git", "archive", ref, "streamcore"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)
    return directory, commit


def csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


LOAD_CPU_PIN: int | None = LOAD_CPU
SERVER_CPU_PIN: int | None = SERVER_CPU


def main(argv: list[str] | None = None) -> int:
    global LOAD_CPU_PIN, SERVER_CPU_PIN

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="all",
                        help=f"comma-separated, or all: {','.join(SERVERS)}")
    parser.add_argument("--protos", default="sse,ws", help="sse, ws or both")
    parser.add_argument("--workloads", default="A", help="any of A,B,C,D")
    parser.add_argument("--runs", type=int, default=3, help="runs per point (median, spread)")
    parser.add_argument("--concurrency", default="1,64,512", help="A: concurrent streams")
    parser.add_argument("--tokens", type=int, default=1000, help="A: tokens per stream")
    parser.add_argument("--duration", type=float, default=5.0, help="A: seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="A: seconds, not measured")
    parser.add_argument("--paced-streams", default="1000,5000", help="B: concurrent streams")
    parser.add_argument("--paced-tokens", type=int, default=200, help="B: tokens per stream")
    parser.add_argument("--rate", type=float, default=20.0, help="B: tokens/s per stream")
    parser.add_argument("--ramp", type=float, default=0.0,
                        help="B: seconds to open all (0: N/1000 s, at most 2.5 s)")
    parser.add_argument("--paced-t0", choices=["request", "connect"], default="request",
                        help="B: the ideal schedule starts when the request is sent (for "
                             "WebSocket: after the handshake) or when TCP connected")
    parser.add_argument("--idle-streams", type=int, default=10000, help="C: open streams")
    parser.add_argument("--hold", type=float, default=3.0, help="C: seconds held idle")
    parser.add_argument("--slow-clients", type=int, default=100, help="D: non-reading clients")
    parser.add_argument("--slow-duration", type=float, default=5.0, help="D: seconds")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                        help="A over SSE: wrk if installed (auto), or loadgen.py")
    parser.add_argument("--retry-loaded", type=int, default=1,
                        help="repeat a run flagged as disturbed up to this many times")
    parser.add_argument("--wait-quiet", type=float, default=0.0,
                        help="before each run, wait up to this many seconds for the machine "
                             "to be quiet (other work below 10%% of a core)")
    parser.add_argument("--streamcore-ref", default=None,
                        help="measure streamcore as of this git ref (git archive into a temp "
                             "dir) instead of the working tree")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--quick", action="store_true",
                        help="CI smoke: streamcore + raw_asyncio, every workload, tiny sizes")
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/out/…)")
    parser.add_argument("--report", default=None, help="print the tables of a results JSON")
    args = parser.parse_args(argv)

    from report import tables

    if args.report:
        with open(args.report) as f:
            print(tables(json.load(f)))
        return 0
    if args.quick:
        if args.servers == "all":
            args.servers = "streamcore,raw_asyncio"
        args.workloads = args.workloads if "--workloads" in (argv or sys.argv) else "A,B,C,D"
        args.runs, args.concurrency, args.tokens = 1, "4", 50
        args.duration, args.warmup = 0.5, 0.2
        args.paced_streams, args.paced_tokens, args.ramp = "20", 6, 0.1
        args.idle_streams, args.hold = 50, 0.3
        args.slow_clients, args.slow_duration = 4, 0.6
        args.loadgen = "python" if args.loadgen == "auto" else args.loadgen
        args.retry_loaded = 0
    args.concurrency = csv_ints(args.concurrency)
    args.paced_streams = csv_ints(args.paced_streams)
    args.protos = [p.strip() for p in args.protos.split(",")]
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    names = list(SERVERS) if args.servers == "all" else [s.strip() for s in
                                                          args.servers.split(",")]
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        parser.error(f"unknown servers {unknown}; known: {list(SERVERS)}")

    # Stop cleanly on SIGTERM, and on SIGINT even when started in the background (where
    # the shell leaves SIGINT ignored): the finally blocks stop the servers under test.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.no_pin or (os.cpu_count() or 1) < 2:
        LOAD_CPU_PIN = SERVER_CPU_PIN = None
    else:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {LOAD_CPU})
    _raise_nofile()
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk"))
    if args.loadgen == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed")

    streamcore_tree = "working tree"
    if args.streamcore_ref:
        directory, commit = snapshot(args.streamcore_ref)
        SERVERS["streamcore"].cwd = directory
        SERVERS["streamcore_user"].cwd = directory  # its streamcore: the snapshot's
        import atexit

        atexit.register(shutil.rmtree, directory, True)
        streamcore_tree = f"{args.streamcore_ref} = {commit}"
    args.out_dir = os.path.join(HERE, "out")
    os.makedirs(args.out_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = args.out or os.path.join(args.out_dir, f"results-{stamp}.json")

    def log(message: str) -> None:
        print(message, flush=True)

    doc: dict[str, Any] = {"started": stamp, "argv": [os.path.relpath(__file__, ROOT),
                                                      *(argv or sys.argv[1:])],
                           "machine": machine_info(), "pinning": {
                               "server_cpu": SERVER_CPU_PIN, "load_cpu": LOAD_CPU_PIN},
                           "settings": {k: v for k, v in vars(args).items()
                                        if k not in ("out_dir",)},
                           "streamcore_tree": streamcore_tree, "skipped": {}, "results": []}
    results: list[dict[str, Any]] = doc["results"]
    for workload in workloads:
        log(f"== workload {workload}")
        for name in names:
            server = SERVERS[name]
            missing = missing_needs(server)
            if missing:
                log(f"  {name}: skipped, not installed: {', '.join(missing)}")
                doc["skipped"][name] = f"not installed: {', '.join(missing)}"
                continue
            run_workload(workload, server, args, bool(use_wrk), results, log)
            _save(doc, out_path)
    _save(doc, out_path)
    log(f"\nresults: {os.path.relpath(out_path, ROOT)}\n")
    log(tables(doc))
    return 0


def _save(doc: dict[str, Any], path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(tmp, path)
    latest = os.path.join(os.path.dirname(path), "latest.json")
    with contextlib.suppress(OSError):
        shutil.copyfile(path, latest)


def median_spread(values: list[float]) -> tuple[float, float]:
    """The median and the spread (max - min) / median."""
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    med = statistics.median(values)
    return med, (max(values) - min(values)) / med if med else 0.0


if __name__ == "__main__":
    sys.exit(main())
