"""What a gateway adds (issue 9): fronts before one upstream, against the upstream direct.

The upstream is a streamcore on its synthetic model, pinned to CPU 0.  In front of it, each
on CPU 1 and all running side by side (measured one at a time, in alternating order):

``direct``      no front: the upstream itself (the baseline)
``streamcore``  ``python -m streamcore serve --upstream 'http://127.0.0.1:P/v1 models=synthetic'``
``nginx``       ``proxy_pass`` with ``proxy_buffering off``, HTTP/1.1 keep-alive to the
                upstream (``peers/nginx_proxy.py``)
``relay``       a byte-level TCP relay on uvloop, one upstream connection per client
                connection, no HTTP parsed (``peers/byte_relay.py``): what one read and
                one write cost in Python before any gateway's own work (the floor for one)
``litellm``     the LiteLLM proxy, one worker, from its own venv (``--litellm-venv``);
                skipped (and said so) when it is not installed
``baseline``    with ``--baseline-ref REF``: the streamcore gateway of commit REF (a before
                to the working tree's after, in the same run)

The load generator (``loadgen.py``) runs on CPU 0 with the upstream, so that CPU 1 belongs to
the front alone; its own CPU is recorded, and it is the same for every front.

Two parts:

``latency``  a paced upstream (``--rate`` tokens/s, ``--tokens`` per answer); at each
             concurrency C, C connections run ``--repeat`` streams back to back, in two
             arrival shapes (``--arrivals``): ``burst``, the C connections opened within
             C/1000 s (at most 1 s), so that equal streams start together and stay in step
             round after round (every request queues behind the C-1 others of its round);
             and ``spread``, the C connections opened evenly over one stream's duration
             (tokens/rate s) and at least 2 streams each, the first stream of each
             connection (the ramp's) validated but not sampled: C streams in flight in
             steady state, arriving evenly (what "C concurrent streams" means for a
             steady load).  At C = 1 the two are the same: burst only.  Client-side
             time to first token (request sent to the first content chunk), lateness of every
             token against ``t0 + i / rate`` and jitter (against the stream's own first
             token), p50 and p99; the *added* TTFT is the front's percentile minus the direct
             one of the same round.  Server CPU of the front and of the upstream per token.
``cpu``      an unpaced upstream; ``--cpu-concurrency`` connections request
             ``--cpu-tokens``-token streams back to back for ``--cpu-duration`` s.  CPU time
             of the front (and of the upstream, for reference) per relayed token, against
             ``synthetic``: a streamcore serving the synthetic model itself on CPU 1.

Every front is first validated (``loadgen.py validate``: strict HTTP/SSE parsing, exactly T
content chunks, ``data: [DONE]`` last, twice on one connection); one that fails is reported
as failing and not measured.  During the runs every stream is checked too (T content chunks
and ``data: [DONE]`` as its last event, once: ``loadgen.py --strict-end``); a run with any
stream that fails the check is reported as invalid, and its latencies are not used.

A run in which other work loaded a core (busy time on CPU 0 not accounted for by the
upstream, the load generator and this script, or on CPU 1 not accounted for by the fronts,
above 5 % of the wall time, or steal above 5 %) is flagged and repeated (``--retry-loaded``).

    python benchmarks/gateway.py                        # everything (about 20 minutes)
    python benchmarks/gateway.py --parts latency --concurrency 100 --runs 3
    python benchmarks/gateway.py --fronts direct,streamcore,nginx --parts cpu
    python benchmarks/gateway.py --report benchmarks/out/gateway-latest.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from functools import partial
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import procstat  # noqa: E402
from run import (  # noqa: E402
    PY,
    Running,
    Server,
    machine_info,
    parse_json_out,
    pinned,
    run_child,
    snapshot,
)

UPSTREAM_CPU = 0
LOAD_CPU = 0
FRONT_CPU = 1
LOADED_SHARE = 0.05
CLIENT_BOUND = 0.90
FRONTS = ("direct", "streamcore", "nginx", "relay", "litellm")
LITELLM_CONFIG = """\
model_list:
  - model_name: synthetic
    litellm_params:
      model: openai/synthetic
      api_base: http://127.0.0.1:{port}/v1
      api_key: x
litellm_settings:
  set_verbose: false
  json_logs: false
  turn_off_message_logging: true
  telemetry: false
general_settings:
  disable_spend_logs: true
  # No key on the proxy (as for the other fronts); LiteLLM refuses to start without one
  # unless told that this is deliberate.
  dangerously_permit_weak_or_unset_master_key: true
"""


def streamcore_upstream(rate: float) -> Server:
    return Server("upstream", [PY, "-m", "streamcore", "serve", "--host", "127.0.0.1",
                               "--port", "{port}", "--token-rate", f"{rate:g}",
                               "--max-answer-tokens", "1000000", "--log-level", "warning",
                               # every load connection comes from 127.0.0.1: no per-address
                               # cap (max_connections_per_ip, 256) at 1000 streams
                               "--max-connections-per-ip", "0"],
                  ("sse",), "streamcore, synthetic model (the upstream)")


def front_servers(upstream_port: int, args: argparse.Namespace) -> dict[str, Server]:
    spec = f"http://127.0.0.1:{upstream_port}/v1 models=synthetic"
    gw = [PY, "-m", "streamcore", "serve", "--host", "127.0.0.1", "--port", "{port}",
          "--upstream", spec, "--log-level", "warning", "--max-connections-per-ip", "0"]
    if args.upstream_pool_size:
        gw += ["--upstream-pool-size", str(args.upstream_pool_size)]
    servers = {
        "streamcore": Server("streamcore", gw, ("sse",), "streamcore gateway"),
        # --baseline-ref: the gateway of another commit, side by side (a before/after
        # within one run, whatever else loads the machine).
        "baseline": Server("baseline", gw, ("sse",),
                           f"streamcore gateway at {args.baseline_ref}",
                           cwd=getattr(args, "baseline_dir", None) or ROOT),
        "nginx": Server("nginx", [PY, os.path.join(HERE, "peers", "nginx_proxy.py"),
                                  "--host", "127.0.0.1", "--port", "{port}",
                                  "--upstream", f"127.0.0.1:{upstream_port}",
                                  "--dir", "{dir}"],
                        ("sse",), "nginx proxy_pass, buffering off"),
        # The floor for a gateway in Python: uvloop copying bytes, no HTTP parsed.
        "relay": Server("relay", [PY, os.path.join(HERE, "peers", "byte_relay.py"),
                                  "--host", "127.0.0.1", "--port", "{port}",
                                  "--upstream", f"127.0.0.1:{upstream_port}"],
                        ("sse",), "a byte-level TCP relay on uvloop (no HTTP)"),
    }
    litellm = os.path.join(args.litellm_venv, "bin", "litellm")
    if os.path.exists(litellm):
        servers["litellm"] = Server(
            "litellm", [litellm, "--host", "127.0.0.1", "--port", "{port}", "--num_workers",
                        "1", "--config", "{dir}/litellm.yaml"],
            ("sse",), "LiteLLM proxy, one worker",
            env={"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                 "LITELLM_TELEMETRY": "False", "DISABLE_ADMIN_UI": "True"})
    return servers


class Front:
    """A front (or the upstream itself, ``direct``) as the benchmark sees it."""

    def __init__(self, name: str, port: int, proc: Running | None) -> None:
        self.name = name
        self.port = port
        self.proc = proc


def start(server: Server, cpu: int, out_dir: str, config: str | None = None,
          ready_timeout: float = 30.0) -> Running:
    # LiteLLM's config file goes into a directory of its own, written before it starts.
    srv_dir = None
    if config is not None:
        import tempfile

        srv_dir = tempfile.mkdtemp(prefix=f"bench-{server.name}-")
        with open(os.path.join(srv_dir, "litellm.yaml"), "w") as f:
            f.write(config)
        server = Server(server.name, [p.replace("{dir}", srv_dir) for p in server.cmd],
                        server.protos, server.label, env=server.env)
    srv = Running(server, 0.0, 0, out_dir, cpu)
    if srv_dir is not None:
        srv.extra_dir = srv_dir
    if not srv.wait_ready(ready_timeout):
        tail = srv.tail()
        srv.stop()
        raise RuntimeError(f"{server.name} did not start:\n{tail}")
    return srv


def stop(srv: Running) -> None:
    srv.stop()
    extra = getattr(srv, "extra_dir", None)
    if extra:
        shutil.rmtree(extra, ignore_errors=True)


def loadgen(mode: str, port: int, **opts: Any) -> list[str]:
    cmd = [PY, os.path.join(HERE, "loadgen.py"), mode, "--port", str(port), "--proto", "sse"]
    for key, value in opts.items():
        if value is True:
            cmd.append(f"--{key.replace('_', '-')}")
        else:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    return pinned(cmd, LOAD_CPU)


def validate(front: Front, tokens: int) -> dict[str, Any]:
    status, text, _, _ = run_child(loadgen("validate", front.port, tokens=tokens), 120)
    try:
        return parse_json_out(text)
    except ValueError:
        return {"ok": False, "error": f"validator exit {status}: {text[-800:]}"}


def _self_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def core_times() -> dict[int, dict[str, float]]:
    """Seconds per core from /proc/stat: ``normal`` (user + system at nice <= 0), ``nice``
    (user time at nice > 0), ``irq`` (irq + softirq: loopback's packet work), ``steal``.
    Everything this benchmark starts runs at nice 0; the machine is shared with test runs
    at nice 10, which fill the idle time of a paced benchmark but yield the core to a nice-0
    process that wakes up."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            parts = line.split()
            v = [int(x) / procstat.CLK_TCK for x in parts[1:]]
            out[int(parts[0][3:])] = {"normal": v[0] + v[2], "nice": v[1],
                                      "irq": v[5] + v[6], "steal": v[7] if len(v) > 7 else 0.0}
    return out


def core_delta(a: dict[int, dict[str, float]],
               b: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
    return {c: {k: b[c][k] - a[c][k] for k in a[c]} for c in a}


def wait_quiet(max_wait: float, log: Any) -> float:
    """Wait (up to max_wait s) until the nice-0 work of others is below 2 x LOADED_SHARE of
    a core on each core (over 0.5 s, our idle servers included).  Returns the seconds waited."""
    if max_wait <= 0:
        return 0.0
    t0 = time.monotonic()
    while True:
        a = core_times()
        time.sleep(0.5)
        d = core_delta(a, core_times())
        busy = max(v["normal"] + v["steal"] for v in d.values()) / 0.5
        waited = time.monotonic() - t0
        if busy < 2 * LOADED_SHARE or waited > max_wait:
            if waited > 1:
                log(f"      waited {waited:.0f} s for quiet cores (other nice-0 work "
                    f"{busy:.0%} of a core)")
            return waited
        time.sleep(1.0)


class Meter:
    """CPU of the measured front, the upstream and the idle fronts; who else was busy."""

    def __init__(self, front: Front, upstream: Running, fronts: list[Front]) -> None:
        self.front, self.upstream, self.fronts = front, upstream, fronts

    def _trees(self) -> dict[str, list[int]]:
        trees = {"upstream": self.upstream.pids()}
        for f in self.fronts:
            if f.proc is not None:
                trees[f.name] = f.proc.pids()
        return trees

    def _cpu(self, trees: dict[str, list[int]]) -> dict[str, float]:
        out = {}
        for name, pids in trees.items():
            root = self.upstream.pid if name == "upstream" else next(
                f.proc.pid for f in self.fronts if f.name == name)
            out[name] = procstat.cpu_seconds(root, pids)
        return out

    def __enter__(self) -> Meter:
        self.trees = self._trees()
        self.cores0 = core_times()
        self.cpu0 = self._cpu(self.trees)
        self.self0 = _self_cpu()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.monotonic() - self.t0
        now = self._trees()
        trees = {k: sorted(set(v) | set(now.get(k, []))) for k, v in self.trees.items()}
        cpu1 = self._cpu(trees)
        self.cpu = {k: cpu1[k] - self.cpu0[k] for k in cpu1}
        self.self_cpu = _self_cpu() - self.self0
        self.cores = core_delta(self.cores0, core_times())

    def machine(self, client_cpu: float) -> dict[str, Any]:
        wall = max(self.wall, 1e-9)
        c0, c1 = self.cores[UPSTREAM_CPU], self.cores[FRONT_CPU]
        fronts_cpu = sum(v for k, v in self.cpu.items() if k != "upstream")
        # Ours all run at nice 0: what is left of the nice-0 time is someone else's.
        other0 = c0["normal"] - self.cpu["upstream"] - client_cpu - self.self_cpu
        other1 = c1["normal"] - fronts_cpu
        out: dict[str, Any] = {
            "wall_s": self.wall, "client_cpu_s": client_cpu, "runner_cpu_s": self.self_cpu,
            "front_cpu_s": self.cpu.get(self.front.name) if self.front.proc else None,
            "upstream_cpu_s": self.cpu["upstream"],
            "idle_fronts_cpu_s": {k: v for k, v in self.cpu.items()
                                  if k not in ("upstream", self.front.name)},
            "other_busy_share": {"cpu0": other0 / wall, "cpu1": other1 / wall},
            "niced_busy_share": {"cpu0": c0["nice"] / wall, "cpu1": c1["nice"] / wall},
            "irq_share": {"cpu0": c0["irq"] / wall, "cpu1": c1["irq"] / wall},
            "steal_share": (c0["steal"] + c1["steal"]) / wall}
        reasons = [f"{core} {share:.0%} busy with other nice-0 work"
                   for core, share in out["other_busy_share"].items() if share > LOADED_SHARE]
        if out["steal_share"] > LOADED_SHARE:
            reasons.append(f"steal {out['steal_share']:.0%}")
        # A front not under test that still works (LiteLLM goes on with the streams of a
        # run that was cut) takes CPU 1 from the one under test.
        for name, cpu in out["idle_fronts_cpu_s"].items():
            if cpu / wall > LOADED_SHARE:
                reasons.append(f"idle front {name} busy {cpu / wall:.0%}")
        out["loaded"] = bool(reasons)
        out["loaded_why"] = reasons
        return out


def measure_paced(front: Front, upstream: Running, fronts: list[Front], conc: int,
                  args: argparse.Namespace, arrivals: str = "burst") -> dict[str, Any]:
    repeat = repeat_for(args, conc)
    ramp = ramp_for(conc)
    extra: dict[str, Any] = {}
    if arrivals == "spread":  # steady load: see the module's docstring
        ramp = args.tokens / args.rate
        repeat = max(2, repeat)
        extra["skip_first"] = True
    # A front that cannot keep up is given this long (streams still open are then cut and
    # the run is invalid): the streams' own duration, the ramp, and --slack s.
    limit = repeat * args.tokens / args.rate + ramp + args.slack
    cmd = loadgen("paced", front.port, concurrency=conc, tokens=args.tokens, rate=args.rate,
                  ramp=ramp, repeat=repeat, strict_end=True, limit=limit, **extra)
    timeout = limit + 60
    with Meter(front, upstream, fronts) as meter:
        status, text, client_cpu, _ = run_child(cmd, timeout)
    result: dict[str, Any] = {"load_cmd": shlex.join(cmd), "repeat": repeat, "ramp_s": ramp,
                              "arrivals": arrivals}
    if status != 0:
        return {**result, "error": f"load generator exit {status}: {text[-800:]}"}
    g = parse_json_out(text)
    expected = conc * repeat
    late, jit, ttft, ttfb = (g.get(k, {}) for k in ("lateness_s", "jitter_s", "ttft_s",
                                                     "ttfb_s"))
    result.update(
        streams_expected=expected, streams_done=g["streams_done"],
        streams_valid=g["streams_valid"], tokens=g["tokens"],
        expected_tokens=expected * args.tokens, errors=g["errors"],
        valid=g["streams_valid"] == expected and not g["errors"],
        ttft_p50_s=ttft.get("p50"), ttft_p99_s=ttft.get("p99"), ttft_max_s=ttft.get("max"),
        ttfb_p50_s=ttfb.get("p50"), ttfb_p99_s=ttfb.get("p99"),
        lateness_p50_s=late.get("p50"), lateness_p99_s=late.get("p99"),
        jitter_p50_s=jit.get("p50"), jitter_p99_s=jit.get("p99"),
        client_cpu_util=g["client_cpu_util"])
    result.update(meter.machine(client_cpu))
    per_token(result)
    return result


def measure_unpaced(front: Front, upstream: Running, fronts: list[Front],
                    args: argparse.Namespace) -> dict[str, Any]:
    cmd = loadgen("throughput", front.port, concurrency=args.cpu_concurrency,
                  tokens=args.cpu_tokens, duration=args.cpu_duration, strict_end=True)
    with Meter(front, upstream, fronts) as meter:
        status, text, client_cpu, _ = run_child(cmd, args.cpu_duration + 60)
    result: dict[str, Any] = {"load_cmd": shlex.join(cmd)}
    if status != 0:
        return {**result, "error": f"load generator exit {status}: {text[-800:]}"}
    g = parse_json_out(text)
    result.update(tokens=g["tokens"], tokens_per_s=g["tokens_per_s"],
                  streams_done=g["streams_done"], streams_valid=g["streams_valid"],
                  errors=g["errors"], client_cpu_util=g["client_cpu_util"])
    result["valid"] = cpu_run_valid(result)
    result.update(meter.machine(client_cpu))
    per_token(result)
    return result


def cpu_run_valid(r: dict[str, Any]) -> bool:
    """Streams cut at the deadline count for the tokens they delivered (the front passed the
    full validation of a stream this long first); every stream that ended must be valid.
    A front so slow that no stream ended in the run (LiteLLM) is measured on cut streams."""
    return ("error" not in r and not r.get("errors") and (r.get("tokens") or 0) > 0
            and r.get("streams_valid") == r.get("streams_done"))


def per_token(result: dict[str, Any]) -> None:
    toks = result.get("tokens") or 0
    wall = max(result["wall_s"], 1e-9)
    for who in ("front", "upstream"):
        cpu = result.get(f"{who}_cpu_s")
        result[f"{who}_cpu_us_per_token"] = cpu / toks * 1e6 if toks and cpu is not None \
            else None
        result[f"{who}_cpu_util"] = cpu / wall if cpu is not None else None
    result["client_bound"] = result["client_cpu_util"] > CLIENT_BOUND


def wait_servers_idle(servers: list[Running], max_wait: float, log: Any) -> float:
    """Wait (up to max_wait s) until our own servers (the upstream, every front) are idle:
    below 2 % of a core together over 0.5 s.  A front whose run was cut may go on with its
    streams for a while (LiteLLM does not stop a stream whose client left)."""
    t0 = time.monotonic()
    trees = [(s.pid, s.pids()) for s in servers]
    while True:
        a = sum(procstat.cpu_seconds(pid, pids) for pid, pids in trees)
        time.sleep(0.5)
        busy = (sum(procstat.cpu_seconds(pid, pids) for pid, pids in trees) - a) / 0.5
        waited = time.monotonic() - t0
        if busy < 0.02 or waited > max_wait:
            if waited > 1:
                log(f"      waited {waited:.0f} s for our servers to be idle "
                    f"({busy:.0%} of a core)")
            return waited
        time.sleep(0.5)


def with_retries(measure: Any, args: argparse.Namespace, log: Any,
                 servers: list[Running] | None = None) -> dict[str, Any]:
    if servers:
        wait_servers_idle(servers, args.wait_idle, log)
    waited = wait_quiet(args.wait_quiet, log)
    result = measure()
    result["waited_for_quiet_s"] = waited
    attempts = [result]
    for _ in range(args.retry_loaded):
        if not result.get("loaded") or "error" in result:
            break
        log(f"      disturbed ({', '.join(result['loaded_why'])}): again")
        if servers:
            wait_servers_idle(servers, args.wait_idle, log)
        waited = wait_quiet(args.wait_quiet, log)
        result = measure()
        result["waited_for_quiet_s"] = waited
        attempts.append(result)
    if len(attempts) > 1:
        result["disturbed_attempts"] = [
            {k: a.get(k) for k in ("loaded_why", "ttft_p99_s", "front_cpu_us_per_token")}
            for a in attempts[:-1]]
    return result


def repeat_for(args: argparse.Namespace, conc: int) -> int:
    for part in args.repeat.split(","):
        c, _, k = part.partition(":")
        if int(c) == conc:
            return int(k)
    return 1


def ramp_for(conc: int) -> float:
    """Seconds to open the connections: 1000 new connections per second at most."""
    return 0.0 if conc <= 1 else min(1.0, conc / 1000)


def rotate(items: list[Any], k: int) -> list[Any]:
    k %= max(1, len(items))
    return items[k:] + items[:k]


# -- the two parts -----------------------------------------------------------------------


def start_fronts(upstream: Running, names: list[str], args: argparse.Namespace,
                 doc: dict[str, Any], log: Any) -> list[Front]:
    servers = front_servers(upstream.port, args)
    fronts: list[Front] = []
    for name in names:
        if name == "direct":
            fronts.append(Front("direct", upstream.port, None))
            continue
        if name not in servers:
            why = (f"not installed (no {args.litellm_venv}/bin/litellm)" if name == "litellm"
                   else "unknown front")
            log(f"  {name}: skipped, {why}")
            doc["skipped"][name] = why
            continue
        config = LITELLM_CONFIG.format(port=upstream.port) if name == "litellm" else None
        try:
            srv = start(servers[name], FRONT_CPU, args.out_dir, config,
                        ready_timeout=120 if name == "litellm" else 30)
        except RuntimeError as exc:
            log(f"  {name}: {exc}")
            doc["skipped"][name] = str(exc)[:2000]
            continue
        doc["commands"][name] = shlex.join(srv.cmd)
        fronts.append(Front(name, srv.port, srv))
    return fronts


def validate_all(fronts: list[Front], tokens: int, doc: dict[str, Any], part: str,
                 log: Any) -> list[Front]:
    ok = []
    for f in fronts:
        v = validate(f, tokens)
        doc["validation"].setdefault(part, {})[f.name] = v
        if v.get("ok"):
            log(f"  {f.name}: valid stream ({tokens} tokens, twice on one connection)")
            ok.append(f)
        else:
            log(f"  {f.name}: FAILS validation: {v.get('error')}")
    return ok


def part_latency(args: argparse.Namespace, doc: dict[str, Any], log: Any, save: Any) -> None:
    log(f"== latency: upstream paced at {args.rate:g} tokens/s, {args.tokens} tokens/answer")
    upstream = start(streamcore_upstream(args.rate), UPSTREAM_CPU, args.out_dir)
    doc["commands"]["upstream_paced"] = shlex.join(upstream.cmd)
    fronts: list[Front] = []
    try:
        fronts = start_fronts(upstream, args.fronts, args, doc, log)
        measured = validate_all(fronts, 5, doc, "latency", log)
        for conc, arrivals in [(c, a) for c in args.concurrency
                               for a in (args.arrivals if c > 1 else ["burst"])]:
            log(f"  -- {conc} concurrent streams, {arrivals} arrivals, "
                f"{repeat_for(args, conc)} per connection")
            servers = [upstream, *(f.proc for f in fronts if f.proc is not None)]
            # Warm up at this concurrency (upstream pools, allocators), not measured.  A front
            # whose warm-up fails (it cannot keep up) is measured once, not three times: its
            # cut streams would only disturb the others' runs.
            once = set()
            for f in measured:
                wait_servers_idle(servers, args.wait_idle, log)
                w = measure_paced_warm(f, upstream, fronts, conc, args)
                if not w.get("valid"):
                    log(f"    {f.name}: warm-up not valid ({brief_errors(w)}): one run only")
                    once.add(f.name)
            for i in range(args.runs):
                for f in rotate(measured, i):
                    if f.name in once and i > 0:
                        continue
                    r = with_retries(partial(measure_paced, f, upstream, fronts, conc, args,
                                             arrivals), args, log, servers)
                    r.update(part="latency", front=f.name, concurrency=conc, run=i,
                             arrivals=arrivals)
                    doc["results"].append(r)
                    log_paced(log, r)
                    save()
    finally:
        for f in fronts:
            if f.proc is not None:
                stop(f.proc)
        stop(upstream)


def measure_paced_warm(f: Front, upstream: Running, fronts: list[Front], conc: int,
                       args: argparse.Namespace) -> dict[str, Any]:
    saved = args.repeat
    args.repeat = f"{conc}:1"
    try:
        return measure_paced(f, upstream, fronts, conc, args)
    finally:
        args.repeat = saved


def part_cpu(args: argparse.Namespace, doc: dict[str, Any], log: Any, save: Any) -> None:
    log(f"== CPU per relayed token: unpaced upstream, {args.cpu_concurrency} connections, "
        f"{args.cpu_tokens}-token streams, {args.cpu_duration:g} s per run")
    upstream = start(streamcore_upstream(0.0), UPSTREAM_CPU, args.out_dir)
    doc["commands"]["upstream_unpaced"] = shlex.join(upstream.cmd)
    fronts: list[Front] = []
    try:
        fronts = start_fronts(upstream, args.fronts, args, doc, log)
        # The reference: streamcore serving the synthetic model itself, on the fronts' core.
        synth = start(Server("synthetic", streamcore_upstream(0.0).cmd, ("sse",),
                             "streamcore serving the synthetic model"), FRONT_CPU,
                      args.out_dir)
        doc["commands"]["synthetic"] = shlex.join(synth.cmd)
        fronts.append(Front("synthetic", synth.port, synth))
        measured = validate_all(fronts, args.cpu_tokens, doc, "cpu", log)
        servers = [upstream, *(f.proc for f in fronts if f.proc is not None)]
        for f in measured:  # warm-up
            wait_servers_idle(servers, args.wait_idle, log)
            saved = args.cpu_duration
            args.cpu_duration = 1.0
            measure_unpaced(f, upstream, fronts, args)
            args.cpu_duration = saved
        for i in range(args.runs):
            for f in rotate(measured, i):
                r = with_retries(partial(measure_unpaced, f, upstream, fronts, args), args,
                                 log, servers)
                r.update(part="cpu", front=f.name, concurrency=args.cpu_concurrency, run=i)
                doc["results"].append(r)
                log_cpu(log, r)
                save()
    finally:
        for f in fronts:
            if f.proc is not None:
                stop(f.proc)
        stop(upstream)


# -- logging and tables ------------------------------------------------------------------


def brief_errors(r: dict[str, Any]) -> str:
    if "error" in r:
        return r["error"][:300]
    return (f"{r.get('streams_valid')}/{r.get('streams_expected', r.get('streams_done'))} "
            f"valid streams, errors {r.get('errors')}")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.2f}"


def flags(r: dict[str, Any]) -> str:
    out = ""
    if "error" in r or not r.get("valid"):
        out += f"  [INVALID: {brief_errors(r)}]"
    if r.get("loaded"):
        out += "  [LOADED: " + "; ".join(r["loaded_why"]) + "]"
    if r.get("client_bound"):
        out += "  [CLIENT-BOUND]"
    return out


def log_paced(log: Any, r: dict[str, Any]) -> None:
    head = (f"    {r['front']:<10} c={r['concurrency']} {r.get('arrivals', 'burst')} "
            f"run {r['run']}:")
    if "error" in r:
        log(f"{head} ERROR {r['error'][:300]}")
        return
    log(f"{head} TTFT p50 {_ms(r['ttft_p50_s'])} p99 {_ms(r['ttft_p99_s'])} ms, lateness "
        f"p50 {_ms(r['lateness_p50_s'])} p99 {_ms(r['lateness_p99_s'])} ms, jitter p99 "
        f"{_ms(r['jitter_p99_s'])} ms, front {_f(r.get('front_cpu_us_per_token'), 1)} "
        f"µs/token, upstream {_f(r.get('upstream_cpu_us_per_token'), 1)} µs/token, "
        f"{r['streams_valid']}/{r['streams_expected']} valid{flags(r)}")


def log_cpu(log: Any, r: dict[str, Any]) -> None:
    head = f"    {r['front']:<10} run {r['run']}:"
    if "error" in r:
        log(f"{head} ERROR {r['error'][:300]}")
        return
    log(f"{head} {r['tokens_per_s']:,.0f} tok/s, front "
        f"{_f(r.get('front_cpu_us_per_token'), 2)} µs/token ({_pct(r.get('front_cpu_util'))}),"
        f" upstream {_f(r.get('upstream_cpu_us_per_token'), 2)} µs/token "
        f"({_pct(r.get('upstream_cpu_util'))}), client {_pct(r.get('client_cpu_util'))}, "
        f"{r['streams_valid']}/{r['streams_done']} valid{flags(r)}")


def _f(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def spread(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return ""
    m = statistics.median(vals)
    return f" ±{(max(vals) - min(vals)) / m:.0%}" if m else ""


def tables(doc: dict[str, Any]) -> str:
    out: list[str] = []
    results = doc["results"]
    lat = [r for r in results if r.get("part") == "latency"]
    named = ("direct", "streamcore", "baseline", "nginx", "relay", "litellm")
    order = [f for f in named if any(r["front"] == f for r in results)] + sorted(
        {r["front"] for r in results} - {*named, "synthetic"})
    if lat:
        rate, tokens = doc["settings"]["rate"], doc["settings"]["tokens"]
        out.append(f"### Latency: paced upstream, {rate:g} tokens/s, {tokens} tokens per "
                   "answer (ms; median of the runs, ± spread)\n")
        out.append("| streams | arrivals | front | valid runs | TTFT p50 | TTFT p99 | "
                   "added TTFT p50 | added TTFT p99 | lateness p50 | lateness p99 | "
                   "jitter p99 | front CPU µs/token | upstream CPU µs/token | flags |")
        out.append("|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
        for conc, arrivals in sorted({(r["concurrency"], _arrivals(r)) for r in lat}):
            at = [r for r in lat if r["concurrency"] == conc and _arrivals(r) == arrivals]
            direct = {r["run"]: r for r in at if r["front"] == "direct" and r.get("valid")}
            for name in order:
                rs = [r for r in at if r["front"] == name]
                if not rs:
                    continue
                ok = [r for r in rs if r.get("valid") and "error" not in r]
                fl = []
                loaded = sum(1 for r in rs if r.get("loaded"))
                if loaded:
                    fl.append(f"⚠{loaded}/{len(rs)} loaded")
                if len(ok) < len(rs):
                    bad = next(r for r in rs if not r.get("valid") or "error" in r)
                    fl.append(f"INVALID {len(rs) - len(ok)}/{len(rs)}: {brief_errors(bad)}")
                if any(r.get("client_bound") for r in ok):
                    fl.append("client-bound")
                if not ok:
                    out.append(f"| {conc} | {arrivals} | {name} | 0/{len(rs)} | - | - | - | "
                               f"- | - | - | - | - | - | {'; '.join(fl)} |")
                    continue

                col = partial(_col, ok)
                added = partial(_added, name, ok, direct)

                out.append(
                    f"| {conc} | {arrivals} | {name} | {len(ok)}/{len(rs)} | "
                    f"{col('ttft_p50_s')} | "
                    f"{col('ttft_p99_s')} | {added('ttft_p50_s')} | {added('ttft_p99_s')} | "
                    f"{col('lateness_p50_s')} | {col('lateness_p99_s')} | "
                    f"{col('jitter_p99_s')} | "
                    f"{col('front_cpu_us_per_token', 1.0) if name != 'direct' else '-'} | "
                    f"{col('upstream_cpu_us_per_token', 1.0)} | {'; '.join(fl)} |")
        out.append("")
    cpu = [r for r in results if r.get("part") == "cpu"]
    for r in cpu:
        r["valid"] = cpu_run_valid(r)
    if cpu:
        s = doc["settings"]
        out.append(f"### CPU per relayed token: unpaced upstream, {s['cpu_concurrency']} "
                   f"connections, {s['cpu_tokens']}-token streams back to back, "
                   f"{s['cpu_duration']:g} s per run (median of the runs, ± spread)\n")
        out.append("| server on CPU 1 | valid runs | tokens/s | CPU 1 server µs/token | "
                   "its CPU use | vs synthetic | upstream (CPU 0) µs/token | client CPU | "
                   "flags |")
        out.append("|---|--:|--:|--:|--:|--:|--:|--:|---|")
        synth = med([r.get("front_cpu_us_per_token") for r in cpu
                     if r["front"] == "synthetic" and r.get("valid")])
        for name in ["synthetic", *order]:
            rs = [r for r in cpu if r["front"] == name]
            if not rs:
                continue
            ok = [r for r in rs if r.get("valid") and "error" not in r]
            fl = []
            loaded = sum(1 for r in rs if r.get("loaded"))
            if loaded:
                fl.append(f"⚠{loaded}/{len(rs)} loaded")
            if len(ok) < len(rs):
                bad = next(r for r in rs if not r.get("valid") or "error" in r)
                fl.append(f"INVALID {len(rs) - len(ok)}/{len(rs)}: {brief_errors(bad)}")
            if any(r.get("client_bound") for r in ok):
                fl.append("client-bound")
            if ok and not any(r.get("streams_done") for r in ok):
                fl.append("no stream ended within a run: cut streams counted")
            if not ok:
                out.append(f"| {name} | 0/{len(rs)} | - | - | - | - | - | - | "
                           f"{'; '.join(fl)} |")
                continue
            tps = [r["tokens_per_s"] for r in ok]
            f_cpu = [r.get("front_cpu_us_per_token") for r in ok]
            f_util = [r.get("front_cpu_util") for r in ok]
            mf = med(f_cpu)
            label = {"direct": "(none: upstream direct)",
                     "synthetic": "synthetic model direct (reference)"}.get(name, name)
            ratio = f"{mf / synth:.2f}x" if mf is not None and synth else "-"
            out.append(
                f"| {label} | {len(ok)}/{len(rs)} | {med(tps):,.0f}{spread(tps)} | "
                f"{'-' if mf is None else f'**{mf:.2f}**{spread(f_cpu)}'} | "
                f"{'-' if med(f_util) is None else f'{med(f_util):.0%}'} | "
                f"{ratio if name != 'synthetic' else '1x'} | "
                f"{med([r['upstream_cpu_us_per_token'] for r in ok]):.2f} | "
                f"{med([r['client_cpu_util'] for r in ok]):.0%} | {'; '.join(fl)} |")
        out.append("")
    out.append(targets(doc))
    return "\n".join(out)


def _arrivals(r: dict[str, Any]) -> str:
    return str(r.get("arrivals", "burst"))  # results before --arrivals: all bursts


def _col(rs: list[dict[str, Any]], key: str, scale: float = 1000.0) -> str:
    vals = [r.get(key) for r in rs]
    m = med(vals)
    return "-" if m is None else f"{m * scale:.2f}{spread(vals)}"


def _added(name: str, rs: list[dict[str, Any]], direct: dict[int, dict[str, Any]],
           key: str) -> str:
    """The median over runs of (front - direct of the same round)."""
    if name == "direct":
        return "0"
    m = med([r[key] - direct[r["run"]][key] for r in rs if r["run"] in direct])
    return "-" if m is None else f"**{m * 1000:+.2f}**"


def targets(doc: dict[str, Any]) -> str:
    """The issue's targets, met or not, from the medians."""
    lat = [r for r in doc["results"] if r.get("part") == "latency" and r.get("valid")]
    cpu = [r for r in doc["results"] if r.get("part") == "cpu" and cpu_run_valid(r)]
    lines = ["### Targets (issue 9)\n"]

    def added_p99(front: str, conc: int, arrivals: str) -> float | None:
        at = [r for r in lat if r["concurrency"] == conc and _arrivals(r) == arrivals]
        direct = {r["run"]: r for r in at if r["front"] == "direct"}
        return med([r["ttft_p99_s"] - direct[r["run"]]["ttft_p99_s"] for r in at
                    if r["front"] == front and r["run"] in direct])

    for arrivals in ("spread", "burst"):
        a100 = added_p99("streamcore", 100, arrivals)
        if a100 is not None:
            lines.append(f"- added TTFT p99 at 100 streams ({arrivals} arrivals) ≤ 1 ms: "
                         f"**{a100 * 1000:+.2f} ms** → {'met' if a100 <= 0.001 else 'NOT met'}")
    for arrivals in ("spread", "burst"):
        g1000 = added_p99("streamcore", 1000, arrivals)
        n1000 = added_p99("nginx", 1000, arrivals)
        if g1000 is not None and n1000 is not None:
            ok = g1000 <= n1000 or g1000 <= 2 * max(n1000, 0.0)
            lines.append(f"- added TTFT p99 at 1000 streams ({arrivals} arrivals) below "
                         f"nginx's or within 2x: streamcore **{g1000 * 1000:+.2f} ms**, nginx "
                         f"{n1000 * 1000:+.2f} ms → {'met' if ok else 'NOT met'}")
    gw = med([r["front_cpu_us_per_token"] for r in cpu if r["front"] == "streamcore"])
    sy = med([r["front_cpu_us_per_token"] for r in cpu if r["front"] == "synthetic"])
    if gw is not None and sy:
        lines.append(f"- gateway CPU per relayed token ≤ 2x serving the synthetic model: "
                     f"**{gw:.2f} µs** vs {sy:.2f} µs = **{gw / sy:.2f}x** → "
                     f"{'met' if gw <= 2 * sy else 'NOT met'}")
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fronts", default=",".join(FRONTS),
                        help=f"comma-separated: {','.join(FRONTS)}")
    parser.add_argument("--parts", default="latency,cpu", help="latency, cpu or both")
    parser.add_argument("--runs", type=int, default=3, help="runs per point (median)")
    parser.add_argument("--concurrency", default="1,100,1000",
                        help="latency: concurrent streams")
    parser.add_argument("--repeat", default="1:10,100:3,1000:1",
                        help="latency: streams per connection, back to back, per concurrency "
                             "(C:K,...; 1 if not listed)")
    parser.add_argument("--arrivals", default="burst,spread",
                        help="latency: arrival shapes at C > 1, burst and/or spread (see above)")
    parser.add_argument("--rate", type=float, default=20.0, help="latency: tokens/s")
    parser.add_argument("--tokens", type=int, default=50, help="latency: tokens per answer")
    parser.add_argument("--cpu-concurrency", type=int, default=64)
    parser.add_argument("--cpu-tokens", type=int, default=1000)
    parser.add_argument("--cpu-duration", type=float, default=5.0)
    parser.add_argument("--upstream-pool-size", type=int, default=0,
                        help="the streamcore gateway's --upstream-pool-size (0: its default)")
    parser.add_argument("--litellm-venv", default=os.path.join(HERE, "out", "litellm-venv"))
    parser.add_argument("--slack", type=float, default=30.0,
                        help="latency: seconds a run may take beyond its streams' duration")
    parser.add_argument("--retry-loaded", type=int, default=1,
                        help="repeat a run that other nice-0 work disturbed (up to N times)")
    parser.add_argument("--wait-idle", type=float, default=60.0,
                        help="before each run, wait up to this many seconds for our own "
                             "servers to be idle (a front may go on with cut streams)")
    parser.add_argument("--wait-quiet", type=float, default=10.0,
                        help="before each run, wait up to this many seconds for quiet cores")
    parser.add_argument("--baseline-ref", default="",
                        help="also measure the streamcore gateway of this git ref as the "
                             "front 'baseline' (git archive into a temp dir): before/after "
                             "in one run")
    parser.add_argument("--out", default=None)
    parser.add_argument("--report", default=None, help="print the tables of a results JSON")
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            print(tables(json.load(f)))
        return 0
    args.fronts = [f.strip() for f in args.fronts.split(",") if f.strip()]
    if args.baseline_ref:
        args.baseline_dir, commit = snapshot(args.baseline_ref)
        import atexit

        atexit.register(shutil.rmtree, args.baseline_dir, True)
        args.baseline_ref = f"{args.baseline_ref} = {commit}"
        if "baseline" not in args.fronts:
            args.fronts.insert(args.fronts.index("streamcore") + 1
                               if "streamcore" in args.fronts else len(args.fronts), "baseline")
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.arrivals = [a.strip() for a in args.arrivals.split(",") if a.strip()]
    if not args.arrivals or set(args.arrivals) - {"burst", "spread"}:
        parser.error("--arrivals: burst, spread or both")
    parts = [p.strip() for p in args.parts.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {LOAD_CPU})
    from run import _raise_nofile

    _raise_nofile()
    args.out_dir = os.path.join(HERE, "out")
    os.makedirs(args.out_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = args.out or os.path.join(args.out_dir, f"gateway-{stamp}.json")
    info = machine_info()
    with contextlib.suppress(Exception):
        py = os.path.join(args.litellm_venv, "bin", "python")
        info["versions"]["litellm"] = subprocess.run(
            [py, "-c", "from importlib.metadata import version; print(version('litellm'))"],
            capture_output=True, text=True, timeout=30).stdout.strip()
    doc: dict[str, Any] = {
        "started": stamp, "argv": [os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])],
        "machine": info, "pinning": {"upstream_cpu": UPSTREAM_CPU, "front_cpu": FRONT_CPU,
                                     "load_cpu": LOAD_CPU},
        "settings": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "commands": {}, "validation": {}, "skipped": {}, "results": []}

    def log(message: str) -> None:
        print(message, flush=True)

    def save() -> None:
        tmp = out_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        os.replace(tmp, out_path)
        with contextlib.suppress(OSError):
            shutil.copyfile(out_path, os.path.join(args.out_dir, "gateway-latest.json"))

    if "latency" in parts:
        part_latency(args, doc, log, save)
        save()
    if "cpu" in parts:
        part_cpu(args, doc, log, save)
        save()
    log(f"\nresults: {os.path.relpath(out_path, ROOT)}\n")
    log(tables(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
