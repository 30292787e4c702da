"""The embedded runner against the same export served by the bundled ``tritonserver``, in one interleaved run, with
the CPU time per clip: what perf_analyzer cannot measure (it loads a served model only: ``benchmarks.perf_analyzer``).

    python -m benchmarks.serve_load EXPORT_DIR [--concurrency 1,4,16] [--duration 5] [--rounds 3] [--out DIR]

Targets: ``embedded`` (``runtime.load(EXPORT_DIR/model.onnx)`` here, one runner shared by the client threads) and the
export served by the bundled server (python kind, started here from ``--server-python``) with the dynamic batcher
(``served-batching``) and without (``served-no-batching``), one remote runner per client thread. A run is N threads
sending requests back to back (:func:`benchmarks.timing.closed_loop`); each (target, concurrency) runs once per round
of :func:`benchmarks.timing.time_interleaved`. Ratios: medians of per-round ratios, bootstrap 95% intervals. CPU ms
per clip: this process's plus the server's and its stubs'. Exit status: 0; 1 when requests failed or a target could
not be set up; 2 for bad arguments; 3 when the bundled server cannot run here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks.environment import environment, process_tree_cpu_s
from benchmarks.outputs import Outputs
from benchmarks.timing import Task, closed_loop, paired_speedup, percentiles, time_interleaved, tty_progress
from benchmarks.workloads import make_requests, parse_lengths
from runtime.errors import RemoteServerError

MAX_CONCURRENCY = 64
EMBEDDED, SERVED_BATCHING, SERVED_NO_BATCHING = "embedded", "served-batching", "served-no-batching"


class ServeLoadError(RuntimeError):
    """A target that could not be set up (a repository, a server that did not start, a failed warm-up request)."""


@contextlib.contextmanager
def targets(export_dir: Path, work: Path, args) -> Any:
    """Yields ``{name: (open_client, server_pid)}`` of the three targets and the set-up's facts; the servers (their
    repositories and logs in ``work``) stop on exit. Raises ServeLoadError: a repository or server that failed."""
    import urllib.request

    from benchmarks.triton_server import LocalTritonServer
    from export.triton_repo import DEFAULT_MAX_QUEUE_DELAY_US, RepoOptions, write_repository
    from runtime.backends import load

    delay = DEFAULT_MAX_QUEUE_DELAY_US if args.max_queue_delay_us is None else args.max_queue_delay_us
    found = {EMBEDDED: (lambda: load(export_dir / "model.onnx"), None)}
    common = dict(kind="python", max_batch_size=args.max_batch_size, max_time=args.max_time,
                  instances=args.instances, stream=False)
    facts = {"repository": {**common, "max_queue_delay_us": delay, "protocol": args.protocol}}
    with contextlib.ExitStack() as stack:
        for name, batching in ((SERVED_BATCHING, True), (SERVED_NO_BATCHING, False)):
            # The delay is the dynamic batcher's: the repository without one has no wait to set (and refuses one).
            opts = RepoOptions(**common, dynamic_batching=batching, max_queue_delay_us=delay if batching else None)
            try:
                write_repository(export_dir, work / name, opts)
                server = stack.enter_context(LocalTritonServer(work / name, python=args.server_python,
                                                               log_file=work / f"{name}.log"))
            except (ValueError, RuntimeError) as e:  # ExportError, RepositoryError, ServerError
                raise ServeLoadError(f"{name}: {e}") from e
            url = f"{server.grpc_url if args.protocol == 'grpc' else server.http_url}/{opts.name}"
            found[name] = (lambda u=url: load(u), server.pid)
            with urllib.request.urlopen(f"{server.http_url}/v2", timeout=10) as r:  # both run the same binary
                facts["versions"] = {"tritonserver": json.load(r).get("version")}
        yield found, facts


def measure(found: dict, requests: list, args, progress=None) -> dict:
    """Warm every target up, time every (target, concurrency) run interleaved round by round, and summarise."""
    runners, clients = {name: [] for name in found}, {}
    try:
        for name, (open_client, _) in found.items():
            shared = name == EMBEDDED  # one embedded runner for all threads; one connection per served client
            runners[name] = [open_client() for _ in range(1 if shared else max(args.concurrency))]
            clients[name] = [r.infer for r in runners[name]] * (max(args.concurrency) if shared else 1)
            warm = closed_loop(clients[name], requests, duration_s=args.warmup or 1e-3, max_requests=args.max_requests)
            if warm["errors"]:
                raise ServeLoadError(f"{name}: a warm-up request failed: {warm['first_error']}")

        def task(name: str, c: int) -> Task:
            def fn(_):
                before = process_tree_cpu_s(found[name][1])
                run = closed_loop(clients[name][:c], requests, duration_s=args.duration, max_requests=args.max_requests)
                after = process_tree_cpu_s(found[name][1])
                return {**run, "server_cpu_s": None if before is None or after is None else after - before}
            return Task(fn=fn)

        tasks = {f"{name}@{c}": task(name, c) for name in found for c in args.concurrency}
        timed = time_interleaved(tasks, args.rounds, warmup=0, seed=args.seed, gap_s=args.gap_ms / 1e3,
                                 cpu_time=True, keep_results=True, progress=progress)
    finally:
        for runner in (r for rs in runners.values() for r in rs):
            with contextlib.suppress(Exception):  # a runner of a server already stopped
                runner.deactivate()
    return summarize(timed, list(found), args.concurrency, args.seed)


def summarize(timed, names: Sequence[str], concurrencies: Sequence[int], seed: int = 0) -> dict:
    """Per (target, concurrency) of ``timed`` (:class:`benchmarks.timing.Rounds`): throughput over rounds, pooled
    percentiles, CPU ms per clip; per served target and concurrency, the per-round ratios to the embedded runner."""
    rows, ratios = [], []
    for name in names:
        for c in concurrencies:
            mine = timed.results[f"{name}@{c}"]
            clips, cps = sum(r["clips"] for r in mine), [r["clips_per_s"] for r in mine]
            server = [r["server_cpu_s"] for r in mine]
            pooled = [x for r in mine for x in r["latency_ms"]]
            rows.append({"target": name, "concurrency": c, "rounds": len(mine),
                         "requests_per_s": float(np.median([r["requests_per_s"] for r in mine])),
                         "clips_per_s": float(np.median(cps)), "clips_per_s_min": min(cps), "clips_per_s_max": max(cps),
                         "requests": sum(r["requests"] for r in mine), "errors": sum(r["errors"] for r in mine),
                         "first_error": next((r["first_error"] for r in mine if r["errors"]), None),
                         "client_cpu_ms_per_clip": sum(timed.cpu_ms[f"{name}@{c}"]) / clips if clips else None,
                         "server_cpu_ms_per_clip": 1e3 * sum(server) / clips if clips and None not in server else None,
                         **(percentiles(pooled) if pooled else {})})
            base = timed.results[f"{EMBEDDED}@{c}"]
            pairs = [(b, t) for b, t in zip(base, mine, strict=True) if b["requests"] and t["requests"]]
            if name != EMBEDDED and pairs:  # time per request: embedded / served = served's throughput / embedded's
                sp = paired_speedup([1 / b["requests_per_s"] for b, _ in pairs],
                                    [1 / t["requests_per_s"] for _, t in pairs], seed=seed)
                tail = paired_speedup([t["p99_ms"] for _, t in pairs], [b["p99_ms"] for b, _ in pairs], seed=seed)
                ratios.append({"target": name, "concurrency": c, "throughput_ratio": sp["median"], "ci95": sp["ci95"],
                               "p99_ratio": tail["median"], "p99_ci95": tail["ci95"]})
    return {"rows": rows, "ratios": ratios, "load_before": timed.load_before, "load_after": timed.load_after}


def result_markdown(result: dict, env: dict) -> str:
    """The run as markdown: the machine and load, how it was measured, one row per target and concurrency, the
    served/embedded ratios."""
    s = result["summary"]
    lines = [f"# Serving load: {result['title']}", "",
             f"{env['device_name']}; python {env['python']}, onnxruntime {env['onnxruntime']}, tritonclient "
             f"{env['tritonclient']}, tritonserver {env['tritonserver']}; {env['date']}. Load average (1, 5, "
             f"15 min) {s['load_before']} before, {s['load_after']} after (above the core count: other processes "
             "shared the CPU).", "", result["setup_text"], "",
             f"{result['rounds']} interleaved rounds of {result['duration_s']:g} s per target and concurrency "
             f"({1e3 * result['gap_s']:.0f} ms pause before each run, {result['warmup_s']:g} s warm-up per target). "
             "clips/s: median (min-max) over rounds; latency: every round's requests; CPU ms per clip: this process "
             "+ the server and its stubs.", "",
             "| target | concurrency | requests/s | clips/s | p50 ms | p99 ms | CPU ms per clip | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        client, server = r["client_cpu_ms_per_clip"], r["server_cpu_ms_per_clip"]
        cpu = "-" if client is None else f"{client:.2f}" if server is None else \
            f"{client:.2f} + {server:.2f} = {client + server:.2f}"
        lines.append(f"| {r['target']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {r['clips_per_s']:.1f} "
                     f"({r['clips_per_s_min']:.1f}-{r['clips_per_s_max']:.1f}) | {r.get('p50_ms', 0):.1f} | "
                     f"{r.get('p99_ms', 0):.1f} | {cpu} | {r['errors']} |")
    lines += ["", f"Served against {EMBEDDED} (medians of per-round ratios, bootstrap 95% intervals):", "",
              "| target | concurrency | throughput ratio | 95% interval | p99 ratio | 95% interval |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {q['target']} | {q['concurrency']} | {q['throughput_ratio']:.2f}x | {q['ci95'][0]:.2f}-"
              f"{q['ci95'][1]:.2f} | {q['p99_ratio']:.2f} | {q['p99_ci95'][0]:.2f}-{q['p99_ci95'][1]:.2f} |"
              for q in s["ratios"]]
    lines += [f"\n{r['target']} at concurrency {r['concurrency']}: {r['errors']} failed request(s), first: "
              f"{r['first_error']}" for r in s["rows"] if r["errors"]]
    return "\n".join(lines) + "\n"


def plot_serve_load(result: dict, plt) -> Any:
    """Clips/s per concurrency (median, min-max over rounds; left) and p50/p99 latency (right), drawn with ``plt``."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for name in result["targets"]:
        mine = [r for r in result["summary"]["rows"] if r["target"] == name and "p99_ms" in r]
        cs, cps = [r["concurrency"] for r in mine], np.array([r["clips_per_s"] for r in mine])
        err = [cps - [r["clips_per_s_min"] for r in mine], [r["clips_per_s_max"] for r in mine] - cps]
        color = left.errorbar(cs, cps, yerr=err, marker="o", capsize=3, label=name)[0].get_color()
        right.plot(cs, [r["p99_ms"] for r in mine], marker="o", color=color, label=f"{name} p99")
        right.plot(cs, [r["p50_ms"] for r in mine], marker=".", linestyle="--", color=color, label=f"{name} p50")
    for ax, ylabel in ((left, "clips/s"), (right, "latency per request (ms)")):
        ax.set(xscale="log", xlabel="concurrent clients", ylabel=ylabel)
        ax.set_xticks(result["concurrency"], [str(c) for c in result["concurrency"]])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(result["title"], fontsize=11)
    return fig


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help)
    p.add_argument("export_dir", help="ONNX export folder (model.onnx, cnn.onnx, bilstm.onnx)")
    p.add_argument("--concurrency", default="1,4,16", help="client threads per run, 1..64 each (default 1,4,16)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--warmup", type=float, default=2.0, help="untimed seconds per target first (default 2)")
    p.add_argument("--gap-ms", type=float, default=200.0, help="untimed pause before each run (default 200)")
    p.add_argument("--max-requests", type=int, default=100_000, help="requests per run at most (default 100000)")
    p.add_argument("--time-limit", type=float, default=900.0, help="refuse a longer plan, s (default 900)")
    p.add_argument("--lengths", default="1-16", help="clip lengths T: LOW-HIGH, T or T,T,... (default 1-16)")
    p.add_argument("--batch", type=int, default=1, help="clips per request (default 1)")
    p.add_argument("--pool", type=int, default=64, help="distinct pre-generated requests, cycled (default 64)")
    p.add_argument("--seed", type=int, default=0, help="inputs, order and bootstrap seed (default 0)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="served clients' protocol")
    p.add_argument("--server-python", default=os.environ.get("TRITON_SERVER_PYTHON"), help="the server's "
                   "interpreter (default: $TRITON_SERVER_PYTHON; `make triton-env` makes one)")
    p.add_argument("--max-batch-size", type=int, default=16, help="the repositories' max_batch_size (default 16)")
    p.add_argument("--max-time", type=int, default=16, help="the repositories' longest clip (default 16)")
    p.add_argument("--max-queue-delay-us", type=int, help="the batcher's delay (default: the generator's)")
    p.add_argument("--instances", type=int, default=1, help="model instances per server, 1..8 (default 1)")
    p.add_argument("--model-name", default=None, help="label in the title (default: the export folder's name)")
    p.add_argument("--out", default=None, help="folder for PREFIX.json/.md/.png (default: print only)")
    p.add_argument("--prefix", default="serve-compare", help="file name stem (default serve-compare)")
    p.add_argument("--force", action="store_true", help="replace --out files these tools did not write")
    return p


def check_args(args) -> None:
    """What can be checked before a server starts (``args.concurrency`` becomes a list); ValueError if wrong."""
    if not (Path(args.export_dir) / "model.onnx").is_file():
        raise ValueError(f"{args.export_dir} has no model.onnx; give an ONNX export folder (python -m export.to_onnx "
                         "CKPT --out DIR, then DIR/fp32)")
    values = str(args.concurrency).split(",")
    if not all(v.strip().isdigit() and 1 <= int(v) <= MAX_CONCURRENCY for v in values):
        raise ValueError(f"--concurrency must be a comma list of 1..{MAX_CONCURRENCY}, e.g. 1,8,16")
    args.concurrency = [int(v) for v in values]
    for name in ("duration", "warmup", "gap_ms", "time_limit", "rounds", "max_requests", "batch", "pool",
                 "max_batch_size", "max_time"):
        zero_ok = name in ("warmup", "gap_ms")
        if getattr(args, name) < 0 or (getattr(args, name) == 0 and not zero_ok):
            raise ValueError(f"--{name.replace('_', '-')} must be {'>= 0' if zero_ok else '> 0'}, got "
                             f"{getattr(args, name)}")
    if max(parse_lengths(args.lengths)) > args.max_time or args.batch > args.max_batch_size \
            or not 1 <= args.instances <= 8:
        raise ValueError(f"need --lengths within --max-time {args.max_time}, --batch <= --max-batch-size "
                         f"{args.max_batch_size} and --instances 1..8")
    plan = 3 * (args.warmup + len(args.concurrency) * args.rounds * (args.duration + args.gap_ms / 1e3))
    if plan > args.time_limit:
        raise ValueError(f"the plan takes {plan:.0f} s, over --time-limit {args.time_limit:g} s")
    if args.out is not None:
        Outputs(args.out, args.prefix, force=args.force).check()


def main(argv: Optional[Sequence[str]] = None) -> int:
    from benchmarks.triton_server import server_unavailable_reason

    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    why = server_unavailable_reason(args.server_python)
    if why:
        print(f"error: the bundled tritonserver cannot run here: {why} (make triton-env sets it up)", file=sys.stderr)
        return 3
    try:
        result, env = compare(args)
    except (ServeLoadError, ValueError, RemoteServerError) as e:  # a bad export, a server down or not answering
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = result_markdown(result, env)
    print(text, end="")
    if args.out:
        written = Outputs(args.out, args.prefix, force=True).write(text, {"environment": env, "result": result},
                                                                    {"": lambda plt: plot_serve_load(result, plt)})
        print("wrote " + ", ".join(str(p) for p in written.values()))
    return 1 if any(r["errors"] for r in result["summary"]["rows"]) else 0


def compare(args) -> tuple:
    """The whole run: servers up, requests made, :func:`measure`, servers down; (result, environment)."""
    from importlib.metadata import version

    from runtime.backends import load

    export_dir = Path(args.export_dir)
    meta = load(export_dir / "model.onnx").metadata
    requests = make_requests(parse_lengths(args.lengths), meta.frame_size, batch=args.batch, pool=args.pool,
                             seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="serve-compare-") as work:
        with targets(export_dir, Path(work), args) as (found, facts):
            summary = measure(found, requests, args, progress=tty_progress)
    c = meta.model_config or {}
    setup = (f"Model: {c.get('backbone')} ({c.get('stem')} stem), {meta.frame_size[0]}x{meta.frame_size[1]} frames, "
             f"BiLSTM {c.get('num_layers')}x{c.get('hidden_size')}, {meta.precision}. Each request: {args.batch} "
             f"clip(s) of random frames, T drawn from {args.lengths} (pool {args.pool}, seed {args.seed}). Served: "
             f"python kind, {args.instances} instance(s), over {args.protocol}; clients and server share this CPU.")
    result = {"title": f"{args.model_name or export_dir.resolve().name}, embedded vs served", "setup_text": setup,
              "targets": list(found), "concurrency": args.concurrency, "rounds": args.rounds,
              "duration_s": args.duration, "warmup_s": args.warmup, "gap_s": args.gap_ms / 1e3, "seed": args.seed,
              "setup": facts, "summary": summary}
    return result, {**environment("cpu"), "tritonclient": version("tritonclient"), **facts["versions"]}


if __name__ == "__main__":
    raise SystemExit(main())
