"""Run every benchmark in one process and write benchmarks/RESULTS.md plus the PNG plots.

    python -m benchmarks [--quick] [--only conversation attention ...] [--no-ray] [--out PATH]

Sections: decode speed + memory K/V pre-cache, conversation scaling (RxT vs stateless baselines),
memory per conversation, attention variants, runtime overhead (Reactor vs direct calls; Ray) and the
event bus. A section that fails is reported in RESULTS.md and the run goes on (exit code 1 at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray binds to 127.0.0.1 only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch

__all__ = ["SECTIONS", "main"]

HERE = Path(__file__).parent
Goal = tuple[str, str, bool | None]  # (goal, measured, met; None = information, no goal)

GOAL_OVERHEAD = 0.10
GOAL_STREAMS = 6.0
GOAL_EXTRA_TTFT_MS = 5.0  # issue 4


# ------------------------------------------------------------------ sections: (quick, plot dir) -> (markdown, goals)


def _decode(quick: bool, plots: Path) -> tuple[str, list[Goal]]:
    from benchmarks import decode_speed

    r = decode_speed.measure(quick)
    return decode_speed.markdown(r), list(decode_speed.goals(r))


def _conversation(quick: bool, plots: Path) -> tuple[str, list[Goal]]:
    from benchmarks import conversation_scaling as cs

    r = cs.measure(quick)
    png = cs.plot(r, plots / "conversation_latency.png")
    total = r["total_cpu_ms"]
    info = (f"total CPU cost of {r['last_turn']} turns vs RxT", f"re-reading baseline {total['reread'] / total['rxt']:.2f}x, "
            f"KV-cache baseline {total['kv'] / total['rxt']:.2f}x", None)
    return cs.markdown(r) + f"\n\n![conversation latency]({png.name})", [cs.goal(r), info]


def _memory(quick: bool, plots: Path) -> tuple[str, list[Goal]]:
    from benchmarks import memory_footprint as mf

    r = mf.measure()
    png = mf.plot(r, plots / "memory_footprint.png")
    return mf.markdown(r) + f"\n\n![memory footprint]({png.name})", [("memory per conversation", mf.goal_line(r), None)]


def _attention(quick: bool, plots: Path) -> tuple[str, list[Goal]]:
    from benchmarks import attention_variants as av

    r = av.measure(quick)
    png = av.plot(r, plots / "attention_variants.png")
    g = av.goal(r)
    return av.markdown(r) + f"\n\n![attention variants]({png.name})", [g] if g else []


def _span(interval: object, spec: str) -> str:
    low, high = interval  # type: ignore[misc]
    return f"{format(low, spec)} to {format(high, spec)}"


def _runtime(quick: bool, plots: Path) -> tuple[str, list[Goal]]:
    from benchmarks import runtime_overhead as ro

    r = asyncio.run(ro.measure(quick, 64))
    tps: dict[int, float] = r["tokens_per_s"]  # type: ignore[assignment]
    lines = [
        f"`tiny` preset (untrained, [EOS] disabled), {r['tokens']}-token answers, {r['turns']} turns per path "
        "(direct and Reactor turns alternating), medians (the last column: median over neighbouring turns of "
        "the ratio or difference, with a distribution-free 95 % confidence interval of that median); Ray actors "
        "on this machine (benchmarks/runtime_overhead.py).",
        "",
        "| | direct calls | Reactor | Reactor / direct |",
        "|---|---:|---:|---:|",
        f"| per turn (answer + memory update), wall ms | {r['direct_turn_ms']:.2f} | {r['reactor_turn_ms']:.2f} | "
        f"{r['overhead']:.3f}x (95 % CI {_span(r['overhead_ci'], '.3f')}) |",
        f"| answer (query -> rx.response.done), wall ms | {r['direct_answer_ms']:.2f} | "
        f"{r['reactor_answer_ms']:.2f} | {r['answer_overhead']:.3f}x (95 % CI {_span(r['answer_overhead_ci'], '.3f')}) |",
        f"| time to first token, wall ms | {r['direct_ttft_ms']:.2f} | {r['reactor_ttft_ms']:.2f} | "
        f"{r['extra_ttft_ms']:+.2f} ms (95 % CI {_span(r['extra_ttft_ci'], '+.2f')} ms) |",
        "",
        "Concurrent streams, in rounds: each round runs every level through the Reactor, then 1 and 16 "
        "conversations through direct in-process calls batched as the actors batch them (one prefill, batched "
        "decode steps, one encoder and one memory-updater call for all): the model's own speed-up, no runtime.",
        "",
        "| concurrent streams | Reactor tokens/s (median of rounds) | vs 1 stream (median of each round's ratio) "
        "| direct batched calls, tokens/s | vs 1 stream |",
        "|---:|---:|---:|---:|---:|",
    ]
    speedup: dict[int, float] = r["speedup"]  # type: ignore[assignment]
    direct_tps: dict[int, float] = r["direct_tokens_per_s"]  # type: ignore[assignment]
    direct_speedup: dict[int, float] = r["direct_speedup"]  # type: ignore[assignment]
    lines += [f"| {n} | {v:.1f} | {speedup[n]:.2f}x | "
              + (f"{direct_tps[n]:.1f} | {direct_speedup[n]:.2f}x |" if n in direct_tps else "— | — |")
              for n, v in tps.items()]
    overhead = r["overhead"] - 1  # type: ignore[operator]
    low, high = (x - 1 for x in r["overhead_ci"])  # type: ignore[attr-defined]
    goals: list[Goal] = [
        (f"runtime overhead <= {GOAL_OVERHEAD:.0%} per turn",
         f"{overhead:+.1%} (wall, median of neighbouring turns; 95 % CI {low:+.1%} to {high:+.1%})",
         overhead <= GOAL_OVERHEAD),
    ]
    goals.append((f"time to first token <= {GOAL_EXTRA_TTFT_MS:.0f} ms more than direct calls",
                  f"{r['extra_ttft_ms']:+.2f} ms ({r['reactor_ttft_ms']:.2f} vs {r['direct_ttft_ms']:.2f} ms)",
                  r["extra_ttft_ms"] <= GOAL_EXTRA_TTFT_MS))  # type: ignore[operator]
    if 16 in tps:
        ratio = speedup[16]
        goals.append((f"16 streams >= {GOAL_STREAMS:.0f}x the tokens/s of one stream (Reactor)",
                      f"{ratio:.2f}x (median of rounds: {tps[16]:.0f} vs {tps[1]:.0f} tokens/s)", ratio >= GOAL_STREAMS))
        if 16 in direct_tps:
            goals.append(("16 streams / one stream, direct batched calls (the model alone, no runtime)",
                          f"{direct_speedup[16]:.2f}x ({direct_tps[16]:.0f} vs {direct_tps[1]:.0f} tokens/s; "
                          f"{GOAL_STREAMS:.0f}x the Reactor's one stream would be {GOAL_STREAMS * tps[1]:.0f})", None))
    return "\n".join(lines), goals


def _events(quick: bool, plots: Path, ray: bool = True) -> tuple[str, list[Goal]]:
    import anyio

    from benchmarks import events_speed as ev

    if not all(hasattr(ev, name) for name in ("bench_codec", "bench_inprocess")):
        return "skipped: benchmarks/events_speed.py exposes no bench_codec / bench_inprocess function", []
    n_codec, n_bus, repeats = (5_000, 20_000, 2) if quick else (50_000, 100_000, 3)
    codec = ev.bench_codec(n_codec, repeats)
    bus = anyio.run(ev.bench_inprocess, n_bus, repeats, 4, 256)
    rows = [
        ("codec round trip, rx.response.chunk", f"{codec['chunk_round_trip_us']:.2f} µs/event"),
        ("codec round trip, rx.response.done", f"{codec['done_round_trip_us']:.2f} µs/event"),
        ("InProcessBus, publish_many(256), 4 subscribers", f"{bus['inprocess_chunks_batched']:,.0f} events/s"),
        ("InProcessBus, publish() one by one", f"{bus['inprocess_chunks_single']:,.0f} events/s"),
        ("InProcessBus + SQLite event log", f"{bus['inprocess_durable_logged_batched']:,.0f} events/s"),
    ]
    if ray and not quick and hasattr(ev, "bench_ray"):
        rbus = anyio.run(ev.bench_ray, n_bus, repeats, 4, 256)
        rows += [("Ray bus, publish_many(256), 4 subscribers", f"{rbus['ray_chunks_batched']:,.0f} events/s"),
                 ("Ray bus + SQLite event log", f"{rbus['ray_durable_logged_batched']:,.0f} events/s")]
    note = "" if (ray and not quick) else " The Ray bus runs in the full mode only (`python -m benchmarks`)."
    lines = [f"benchmarks/events_speed.py functions; {n_codec} codec events, {n_bus} bus events; wall time, best of "
             f"{repeats} (that script's convention), so load on the machine lowers these rates.{note}", "", "| | rate |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    worst = max(codec["chunk_round_trip_us"], codec["done_round_trip_us"])
    info: Goal = ("event codec / bus (issue 3 goals: <= 20 µs, >= 100k events/s)",
                  f"{worst:.1f} µs round trip, {bus['inprocess_chunks_batched']:,.0f} events/s in-process",
                  worst <= 20 and bus["inprocess_chunks_batched"] >= 100_000)
    return "\n".join(lines), [info]


SECTIONS: dict[str, tuple[str, Callable[..., tuple[str, list[Goal]]]]] = {
    "decode": ("Decode speed and memory K/V pre-caching", _decode),
    "conversation": ("Per-turn latency over a 128-turn conversation: RxT vs stateless baselines", _conversation),
    "memory": ("Memory per conversation: STM vs KV cache", _memory),
    "attention": ("Attention variants: SQA, sSQA, xSQA vs GQA, MQA, MHA", _attention),
    # the in-process bus figures are wall rates: run them before Ray starts (its processes wind down
    # for seconds after the runtime section and took up to 3/4 of those rates)
    "events": ("Event codec and bus", _events),
    "runtime": ("Runtime overhead: Reactor vs direct model calls", _runtime),
}


# ------------------------------------------------------------------ report


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def host_speed() -> str:
    """Thread-CPU ms of a fixed workload shaped like one decode step of the tiny model (many small
    kernels: 1x128 rows through 128x512 and 512x128 weights, 40 times; 1 thread), median of 25 samples
    over ~0.1 s. The cores are shared, and their speed moves between runs and within one (the decode
    figures swing 1.4-2.6 ms/token with it) — compare this line across reports."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x, up, down = torch.randn(1, 128), torch.randn(128, 512), torch.randn(512, 128)
    times = []
    with torch.no_grad():
        for _ in range(25):
            c0 = time.thread_time()
            for _ in range(40):
                x = torch.nn.functional.rms_norm(x + torch.relu(x @ up) @ down * 1e-3, (128,))
            times.append(1000 * (time.thread_time() - c0))
    best = sorted(times)[len(times) // 2]
    torch.set_num_threads(threads)
    return f"{best:.2f} ms"


def _met(met: bool | None) -> str:
    return "—" if met is None else ("met" if met else "**NOT met**")


def actor_event_loop() -> str:
    """The event loop Ray gives its async actors here: uvloop when it is installed (the dev tools bring
    it), unless ``RAY_USE_UVLOOP`` says otherwise (Ray reads it as "1"/"true")."""
    if importlib.util.find_spec("uvloop") is None:
        return "asyncio (uvloop not installed)"
    if "RAY_USE_UVLOOP" in os.environ and os.environ["RAY_USE_UVLOOP"].lower() not in ("1", "true"):
        return "asyncio (RAY_USE_UVLOOP is off)"
    return "uvloop"


def render(results: dict[str, tuple[str, list[Goal], float]], quick: bool, started: dt.datetime,
           load_start: str, elapsed: float, speed_start: str = "n/a") -> str:
    """RESULTS.md: machine info, the goals table, then one section per benchmark."""
    lines = [
        "# reactor-rt benchmarks",
        "",
        f"Generated by `python -m benchmarks{' --quick' if quick else ''}` on {started:%Y-%m-%d %H:%M} UTC "
        f"in {elapsed:.0f} s. Every comparison below was measured side by side in this one run: same "
        "machine, warm-up excluded, medians of several runs, compared variants run round-robin so that "
        "load swings hit them alike. Model figures use one torch thread and are thread-CPU ms (what the work "
        "costs on a free core); wall ms, which also count time other processes took the core, are given "
        "beside them. The runtime section is wall time (it spans processes).",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {_cpu_model()}, {os.cpu_count()} logical CPUs (shared with other work) |",
        f"| load average 1/5/15 min | {load_start} at start, {_load()} at end |",
        f"| host speed: a decode-step-like loop of small kernels, CPU ms (lower is faster) | {speed_start} at start, "
        f"{host_speed()} at end |",
        f"| torch | {torch.__version__} (CPU), threads used: 1 |",
        f"| python | {platform.python_version()} on {platform.system()} {platform.machine()} |",
        f"| Ray actors' event loop | {actor_event_loop()} |",
        "",
        "## Goals",
        "",
        "| goal | measured | |",
        "|---|---|---|",
    ]
    for _, goals, _ in results.values():
        lines += [f"| {g} | {m} | {_met(met)} |" for g, m, met in goals]
    for key, (body, _, seconds) in results.items():
        lines += ["", f"## {SECTIONS[key][0]}", "", body, "", f"_{seconds:.0f} s_"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print each section and write RESULTS.md; 1 if a section failed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the <= 5 minute run: fewer turns and repeats")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these sections")
    parser.add_argument("--no-ray", action="store_true", help="skip what needs Ray (runtime overhead, Ray bus)")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"), help="where to write the Markdown report (the PNGs go beside it)")
    args = parser.parse_args(argv)
    chosen = [k for k in SECTIONS if (args.only is None or k in args.only) and not (args.no_ray and k == "runtime")]
    started, load_start, speed_start, t0 = dt.datetime.now(dt.UTC), _load(), host_speed(), time.perf_counter()
    threads = torch.get_num_threads()
    plots = Path(args.out).parent  # the PNGs go next to the report, which links them by name
    plots.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[str, list[Goal], float]] = {}
    failed = False
    for key in chosen:
        title, fn = SECTIONS[key]
        print(f"== {title}", flush=True)
        t = time.perf_counter()
        try:
            extra = {"ray": not args.no_ray} if key == "events" else {}
            body, goals = fn(args.quick, plots, **extra)
        except Exception:  # report it and go on with the other benchmarks
            failed = True
            body, goals = "FAILED:\n\n```\n" + traceback.format_exc() + "```", [(title, "failed", False)]
        finally:
            torch.set_num_threads(threads)
        results[key] = (body, goals, time.perf_counter() - t)
        print(body, f"\n({results[key][2]:.0f} s)\n", flush=True)
    text = render(results, args.quick, started, load_start, time.perf_counter() - t0, speed_start)
    Path(args.out).write_text(text)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
