"""Tables (markdown) and plots (PNG) from the runner's results JSON.

    python benchmarks/report.py benchmarks/out/results-*.json [--plots benchmarks/]

Several files are merged (later files win for the same workload/server/proto/concurrency).
Each cell is the median of the runs; ``±`` is the spread, (max - min) / median.  A ``⚠``
marks a point where some run was flagged as disturbed by other work on the machine, ``C``
one where the load generator used > 90 % of its core.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from typing import Any

ORDER = ["streamcore", "raw_asyncio", "nginx", "fastapi_sse", "uvicorn_asgi", "uvicorn_h11",
         "hypercorn", "granian", "aiohttp", "websockets", "picows"]


def _med(values: list[Any]) -> tuple[float, float]:
    values = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    med = statistics.median(values)
    return med, ((max(values) - min(values)) / med if med else 0.0)


def _fmt(value: float, digits: int = 2, scale: float = 1.0, spread: float | None = None,
         thousands: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    v = value * scale
    text = f"{v:,.0f}" if thousands else f"{v:.{digits}f}"
    if spread is not None and not math.isnan(spread):
        text += f" ±{spread:.0%}"
    return text


def groups(doc: dict[str, Any]) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in doc["results"]:
        key = (r["workload"], r["server"], r.get("proto", "-"), r.get("concurrency", 0))
        out[key].append(r)
    return out


def _sort_key(key: tuple) -> tuple:
    workload, server, proto, conc = key
    rank = ORDER.index(server) if server in ORDER else len(ORDER)
    return (workload, proto, conc or 0, rank)


def _flags(runs: list[dict[str, Any]]) -> str:
    flags = []
    loaded = sum(1 for r in runs if r.get("loaded"))
    if loaded:
        flags.append(f"⚠{loaded}/{len(runs)}")
    if any(r.get("client_bound") for r in runs):
        flags.append("C")
    errors: dict[str, int] = defaultdict(int)
    for r in runs:
        for k, v in (r.get("errors") or {}).items():
            errors[k] += v
    if errors:
        flags.append(", ".join(f"{k}:{v}" for k, v in errors.items()))
    return " ".join(flags)


def tables(doc: dict[str, Any]) -> str:
    g = groups(doc)
    lines: list[str] = []
    keys = sorted(g, key=_sort_key)
    invalid = [(k, rs) for k, rs in g.items() if all("error" in r for r in rs)]
    for workload in "ABCD":
        ks = [k for k in keys if k[0] == workload and any("error" not in r for r in g[k])]
        if not ks:
            continue
        if workload == "A":
            lines += ["### A: throughput (unpaced, tokens/stream = "
                      f"{g[ks[0]][0].get('tokens_per_stream')})", "",
                      "| server | proto | streams | server CPU µs/token | tokens/s | "
                      "server CPU | stream p50 ms | stream p99 ms | client CPU | runs | flags |",
                      "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
            for k in ks:
                rs = [r for r in g[k] if "error" not in r]
                cpt, cpt_s = _med([r["server_cpu_us_per_token"] for r in rs])
                tps, tps_s = _med([r["tokens_per_s"] for r in rs])
                util, _ = _med([r["server_cpu_util"] for r in rs])
                p50, _ = _med([r.get("stream_p50_s") for r in rs])
                p99, _ = _med([r.get("stream_p99_s") for r in rs])
                cu, _ = _med([r["client_cpu_util"] for r in rs])
                lines.append(f"| {k[1]} | {k[2]} | {k[3]} | **{_fmt(cpt, 2, spread=cpt_s)}** | "
                             f"{_fmt(tps, spread=tps_s, thousands=True)} | {_fmt(util, 0, 100)}% "
                             f"| {_fmt(p50, 1, 1000)} | {_fmt(p99, 1, 1000)} | "
                             f"{_fmt(cu, 0, 100)}% | {len(rs)} ({rs[0].get('tool')}) | "
                             f"{_flags(rs)} |")
        elif workload == "B":
            lines += [f"### B: paced ({g[ks[0]][0].get('rate', 20):g} tokens/s per stream, "
                      f"{g[ks[0]][0].get('tokens_per_stream')} tokens per stream)", "",
                      "| server | proto | streams | tokens delivered | lateness p50 ms | "
                      "p99 ms | p99.9 ms | jitter p99 ms | TTFB p50 ms | TTFB p99 ms | "
                      "server CPU µs/token | server CPU | client CPU | runs | flags |",
                      "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
            for k in ks:
                rs = [r for r in g[k] if "error" not in r]
                deliv, _ = _med([r["tokens"] / r["expected_tokens"] for r in rs])
                l50, l50s = _med([r["lateness_p50_s"] for r in rs])
                l99, l99s = _med([r["lateness_p99_s"] for r in rs])
                l999, _ = _med([r["lateness_p999_s"] for r in rs])
                j99, _ = _med([r.get("jitter_p99_s") for r in rs])
                t50, _ = _med([r["ttfb_p50_s"] for r in rs])
                t99, _ = _med([r["ttfb_p99_s"] for r in rs])
                cpt, cpt_s = _med([r["server_cpu_us_per_token"] for r in rs])
                util, _ = _med([r["server_cpu_util"] for r in rs])
                cu, _ = _med([r["client_cpu_util"] for r in rs])
                lines.append(f"| {k[1]} | {k[2]} | {k[3]} | {_fmt(deliv, 1, 100)}% | "
                             f"{_fmt(l50, 1, 1000, l50s)} | **{_fmt(l99, 1, 1000, l99s)}** | "
                             f"{_fmt(l999, 1, 1000)} | {_fmt(j99, 1, 1000)} | "
                             f"{_fmt(t50, 1, 1000)} | "
                             f"{_fmt(t99, 1, 1000)} | {_fmt(cpt, 2, spread=cpt_s)} | "
                             f"{_fmt(util, 0, 100)}% | {_fmt(cu, 0, 100)}% | {len(rs)} | "
                             f"{_flags(rs)} |")
        elif workload == "C":
            lines += ["### C: idle streams (open, first token received, then silent)", "",
                      "| server | proto | streams | open | server RSS per stream KiB | "
                      "RSS total MiB | still held 1 s after close, KiB per stream | idle CPU | "
                      "runs | flags |",
                      "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
            for k in ks:
                rs = [r for r in g[k] if "error" not in r]
                opened, _ = _med([r["streams_open"] for r in rs])
                per, per_s = _med([r["rss_per_conn"] for r in rs])
                total, _ = _med([r["rss_after_hold"] for r in rs])
                idle, _ = _med([r["idle_cpu_util"] for r in rs])
                kept, _ = _med([r.get("rss_kept_per_closed_conn") for r in rs])
                lines.append(f"| {k[1]} | {k[2]} | {k[3]} | {opened:.0f} | "
                             f"**{_fmt(per, 1, 1 / 1024, per_s)}** | "
                             f"{_fmt(total, 0, 1 / 2**20)} | {_fmt(kept, 1, 1 / 1024)} | "
                             f"{_fmt(idle, 1, 100)}% | {len(rs)} | {_flags(rs)} |")
        elif workload == "D":
            lines += ["### D: slow readers (ask for 1M tokens, read nothing)", "",
                      "| server | proto | clients | RSS growth MiB | per client KiB | "
                      "peak RSS MiB | CPU (2nd half) | closed by server | runs | flags |",
                      "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
            for k in ks:
                rs = [r for r in g[k] if "error" not in r]
                growth, gs = _med([r["rss_growth"] for r in rs])
                per, _ = _med([r["rss_growth_per_conn"] for r in rs])
                peak, _ = _med([r["rss_peak"] for r in rs])
                cpu, _ = _med([r["cpu_util_second_half"] for r in rs])
                closed, _ = _med([r["closed_by_server"] for r in rs])
                lines.append(f"| {k[1]} | {k[2]} | {k[3]} | **{_fmt(growth, 1, 1 / 2**20, gs)}**"
                             f" | {_fmt(per, 0, 1 / 1024)} | {_fmt(peak, 0, 1 / 2**20)} | "
                             f"{_fmt(cpu, 1, 100)}% | {closed:.0f} | {len(rs)} | "
                             f"{_flags(rs)} |")
        lines.append("")
    if invalid:
        lines += ["### Not measured", ""]
        for k, rs in sorted(invalid, key=lambda kr: _sort_key(kr[0])):
            err = rs[0].get("validation", {}).get("error") or rs[0].get("error")
            lines.append(f"- {k[0]} {k[1]}/{k[2]}: {str(err)[:300]}")
        lines.append("")
    for name, why in (doc.get("skipped") or {}).items():
        lines.append(f"- {name}: skipped ({why})")
    return "\n".join(lines)


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Later documents replace earlier ones point by point."""
    points: dict[tuple, list[dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    for doc in docs:
        for key, rs in groups(doc).items():
            points[key] = rs
        skipped.update(doc.get("skipped") or {})
    # A point that failed (an invalid stream, say) and was measured later is no failure.
    measured = {k[:3] for k, rs in points.items() if any("error" not in r for r in rs)}
    points = {k: rs for k, rs in points.items()
              if any("error" not in r for r in rs) or k[:3] not in measured}
    merged = dict(docs[-1])
    merged["results"] = [r for rs in points.values() for r in rs]
    merged["skipped"] = skipped
    return merged


def _color(i: int) -> str:
    palette = ["#d62728", "#7f7f7f", "#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b",
               "#e377c2", "#17becf", "#bcbd22", "#393b79", "#000000"]
    return palette[i % len(palette)]


def plots(doc: dict[str, Any], directory: str) -> list[str]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = groups(doc)
    written = []
    for workload, metric, ylabel, fname, title in (
        ("A", "server_cpu_us_per_token", "server CPU µs per token", "cpu_per_token.png",
         "Workload A: server CPU per token (unpaced), lower is better"),
        ("B", "lateness_p99_s", "lateness p99 (ms)", "lateness.png",
         "Workload B: p99 token lateness vs ideal 20 tok/s schedule (solid; p50 dashed)"),
        ("B", "server_cpu_us_per_token", "server CPU µs per token", "cpu_per_token_paced.png",
         "Workload B: server CPU per token (paced 20 tok/s)"),
    ):
        keys = [k for k in g if k[0] == workload and any("error" not in r for r in g[k])]
        if not keys:
            continue
        protos = sorted({k[2] for k in keys})
        fig, axes = plt.subplots(1, len(protos), figsize=(7.5 * len(protos), 4.8),
                                 squeeze=False)
        for ax, proto in zip(axes[0], protos, strict=True):
            servers = sorted({k[1] for k in keys if k[2] == proto},
                             key=lambda s: ORDER.index(s) if s in ORDER else 99)
            for server in servers:
                i = ORDER.index(server) if server in ORDER else len(ORDER)
                pts = sorted((k[3], g[k]) for k in keys if k[1] == server and k[2] == proto)
                xs, ys, lo, hi = [], [], [], []
                for conc, rs in pts:
                    vals = [r[metric] for r in rs if "error" not in r and r.get(metric)
                            is not None]
                    if not vals:
                        continue
                    scale = 1000 if metric.endswith("_s") else 1
                    floor = 0.01 if metric == "lateness_p99_s" else 0.0
                    xs.append(conc)
                    ys.append(max(floor, statistics.median(vals) * scale))
                    lo.append(max(floor, min(vals) * scale))
                    hi.append(max(floor, max(vals) * scale))
                if not xs:
                    continue
                style = dict(marker="o", linewidth=2.6 if server == "streamcore" else 1.3,
                             color=_color(i))
                ax.plot(xs, ys, label=server, **style)
                ax.fill_between(xs, lo, hi, alpha=0.15, color=_color(i))
                if metric == "lateness_p99_s":
                    p50 = [statistics.median([r["lateness_p50_s"] * 1000 for rs2 in [rs]
                                              for r in rs2 if "error" not in r])
                           for _, rs in pts if any("error" not in r for r in rs)]
                    # A log axis: clamp at 10 µs (a token can even be "early" by clock noise).
                    ax.plot(xs, [max(v, 0.01) for v in p50], linestyle="--", color=_color(i),
                            linewidth=1)
            ax.set_xscale("log")
            if metric == "lateness_p99_s" or workload == "A":
                ax.set_yscale("log")
            ax.set_xlabel("concurrent streams")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{proto.upper()}")
            ax.grid(True, which="both", alpha=0.3)
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xticks(sorted({k[3] for k in keys if k[2] == proto}))
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.suptitle(title)
        fig.tight_layout()
        path = f"{directory.rstrip('/')}/{fname}"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--plots", default=None, help="directory for the PNG plots")
    args = parser.parse_args()
    docs = []
    for path in args.files:
        with open(path) as f:
            docs.append(json.load(f))
    doc = merge(docs)
    print(tables(doc))
    if args.plots:
        for path in plots(doc, args.plots):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
