"""benchmarks.serve_load and its pieces: the request workload, the closed-loop load run, the per-round ratios, and the
embedded-versus-served comparison run as a user runs it against the bundled tritonserver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import run_cli

from benchmarks.environment import process_tree_cpu_s
from benchmarks.outputs import is_own_output
from benchmarks.serve_load import EMBEDDED, SERVED_BATCHING, SERVED_NO_BATCHING, main, summarize
from benchmarks.timing import Rounds, closed_loop
from benchmarks.workloads import make_requests, parse_lengths


def test_clip_lengths_and_requests():
    assert parse_lengths("1-16") == tuple(range(1, 17)) and parse_lengths("8") == (8,)
    assert parse_lengths("4,8,16") == (4, 8, 16)
    for bad in ("x", "0-4", "5-2", "", "1,,2"):
        with pytest.raises(ValueError, match="valid forms"):
            parse_lengths(bad)
    pool = make_requests((2, 5), (16, 12), batch=3, pool=20, seed=1)
    assert len(pool) == 20
    for frames, lengths in pool:
        assert frames.dtype == np.float32 and lengths.dtype == np.int32
        assert frames.shape == (3, int(lengths.max()), 3, 16, 12) and set(lengths) <= {2, 5}
        assert np.abs(frames).sum() > 0  # random frames, never zeros
    assert {int(t) for _, ls in pool for t in ls} == {2, 5}  # both lengths drawn
    again = make_requests((2, 5), (16, 12), batch=3, pool=20, seed=1)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(pool, again, strict=True))  # seeded


def _sleeper(ms: float, calls: list):
    def infer(frames, lengths):
        calls.append(threading.get_ident())
        time.sleep(ms / 1e3)
    return infer


def test_closed_loop_bounds_and_counts():
    requests = make_requests((1, 2, 3), (4, 4), batch=2, pool=5)
    calls = []
    run = closed_loop([_sleeper(1, calls) for _ in range(4)], requests, duration_s=30, max_requests=40)
    assert run["requests"] == 40 == len(calls) == len(run["latency_ms"])  # the request bound, exactly
    assert run["clips"] == 80 and run["errors"] == 0
    assert len(set(calls)) == 4  # every client thread sent requests
    assert run["elapsed_s"] < 10 and run["requests_per_s"] == pytest.approx(40 / run["elapsed_s"])
    assert all(x >= 1.0 for x in run["latency_ms"]) and run["p99_ms"] >= run["p50_ms"] >= 1.0  # each slept 1 ms

    t0 = time.perf_counter()
    run = closed_loop([_sleeper(5, [])], requests, duration_s=0.3)
    assert time.perf_counter() - t0 < 0.3 + 0.5  # the time bound: stops after the duration (and one call)
    assert 0 < run["requests"] <= 0.3 / 5e-3 + 1
    for clients, duration in (([], 1), ([_sleeper(1, [])], 0)):
        with pytest.raises(ValueError, match="need clients"):
            closed_loop(clients, requests, duration_s=duration)


def test_a_failing_client_stops_its_thread_and_is_reported():
    requests = make_requests((2,), (4, 4), pool=3)
    count = [0]

    def flaky(frames, lengths):
        count[0] += 1
        if count[0] == 3:
            raise ConnectionError("server went away")
    good = []
    run = closed_loop([flaky, _sleeper(1, good)], requests, duration_s=0.3)
    assert run["errors"] == 1 and run["first_error"] == "ConnectionError: server went away"
    assert count[0] == 3  # the failing thread stopped at its failure
    assert run["requests"] == 2 + len(good)  # the other thread went on


def _run(rps: float, p99: float, server_cpu_s=None) -> dict:
    latency = [1.0] * 9 + [p99]
    return {"requests": 10, "clips": 20, "errors": 0, "first_error": None, "requests_per_s": rps,
            "clips_per_s": 2 * rps, "latency_ms": latency, "p50_ms": 1.0, "p99_ms": p99, "server_cpu_s": server_cpu_s}


def test_summary_ratios_are_medians_of_per_round_ratios():
    # Three rounds at concurrency 8: served/embedded throughput 1.0, 1.2 and 0.9, p99 ratio 0.5, 0.4 and 1.2.
    embedded = [_run(100, 100), _run(100, 100), _run(100, 100)]
    served = [_run(100, 50, 0.1), _run(120, 40, 0.1), _run(90, 120, 0.1)]
    timed = Rounds(wall_ms={}, cpu_ms={f"{EMBEDDED}@8": [30.0] * 3, f"{SERVED_BATCHING}@8": [6.0] * 3},
                   results={f"{EMBEDDED}@8": embedded, f"{SERVED_BATCHING}@8": served}, load_before=[1.0, 1.0, 1.0],
                   load_after=[1.5, 1.0, 1.0])
    s = summarize(timed, [EMBEDDED, SERVED_BATCHING], [8])
    rows = {r["target"]: r for r in s["rows"]}
    assert rows[SERVED_BATCHING]["clips_per_s"] == 200 and rows[SERVED_BATCHING]["clips_per_s_max"] == 240
    assert rows[SERVED_BATCHING]["requests"] == 30 and rows[SERVED_BATCHING]["rounds"] == 3
    assert rows[EMBEDDED]["client_cpu_ms_per_clip"] == pytest.approx(90 / 60)  # this process's CPU over 60 clips
    assert rows[EMBEDDED]["server_cpu_ms_per_clip"] is None  # no server
    assert rows[SERVED_BATCHING]["server_cpu_ms_per_clip"] == pytest.approx(300 / 60)
    assert rows[EMBEDDED]["p50_ms"] == 1.0  # pooled over every round's requests
    (q,) = s["ratios"]
    assert (q["target"], q["concurrency"]) == (SERVED_BATCHING, 8)
    assert q["throughput_ratio"] == pytest.approx(1.0) and q["p99_ratio"] == pytest.approx(0.5)
    assert q["ci95"][0] <= 1.0 <= q["ci95"][1] and s["load_after"] == [1.5, 1.0, 1.0]


@pytest.mark.parametrize("argv, message", [
    (["/nonexistent"], "has no model.onnx"),
    (["EXPORT", "--concurrency", "1,100"], "--concurrency must be a comma list of 1..64"),
    (["EXPORT", "--concurrency", "1,x"], "--concurrency must be a comma list of 1..64"),
    (["EXPORT", "--lengths", "0-3"], "lengths >= 1"),
    (["EXPORT", "--lengths", "1-32"], "within --max-time 16"),
    (["EXPORT", "--duration", "0"], "--duration must be > 0"),
    (["EXPORT", "--gap-ms", "-1"], "--gap-ms must be >= 0"),
    (["EXPORT", "--rounds", "50", "--duration", "30"], "over --time-limit 900"),
])
def test_cli_refuses_bad_arguments_before_any_server(argv, message, tiny_export, capsys):
    assert main([str(tiny_export) if a == "EXPORT" else a for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_compares_embedded_and_served(tiny_export, server_python, tmp_path):
    proc = run_cli("benchmarks.serve_load", tiny_export, "--server-python", server_python, "--concurrency", "1,3",
                      "--lengths", "1-4", "--max-time", "4", "--duration", "0.4", "--rounds", "2", "--warmup", "0.3",
                      "--gap-ms", "0", "--out", tmp_path, "--prefix", "tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "tiny.json").read_text())
    rows = {(r["target"], r["concurrency"]): r for r in data["result"]["summary"]["rows"]}
    assert set(rows) == {(t, c) for t in (EMBEDDED, SERVED_BATCHING, SERVED_NO_BATCHING) for c in (1, 3)}
    assert all(r["errors"] == 0 and r["requests"] > 0 and r["rounds"] == 2 for r in rows.values())
    # CPU per clip: this process's for every target; the server's (its stubs' included) for the served ones only
    assert all(r["client_cpu_ms_per_clip"] > 0 for r in rows.values())
    assert all((r["server_cpu_ms_per_clip"] is None) == (t == EMBEDDED) for (t, _), r in rows.items())
    assert {(q["target"], q["concurrency"]) for q in data["result"]["summary"]["ratios"]} == {
        (t, c) for t in (SERVED_BATCHING, SERVED_NO_BATCHING) for c in (1, 3)}
    assert data["environment"]["tritonserver"] and data["result"]["setup"]["repository"]["kind"] == "python"
    md = (tmp_path / "tiny.md").read_text()
    assert md.startswith("# Serving load: fp32, embedded vs served") and md in proc.stdout
    assert all(is_own_output(tmp_path / f"tiny.{s}") for s in ("json", "md", "png"))  # a rerun replaces them


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process CPU times come from Linux's /proc")
def test_process_tree_cpu_counts_the_descendants():
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\nprint(1, flush=True)\n" \
           "time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()  # it has burnt 0.4 s
        own, tree = process_tree_cpu_s(child.pid), process_tree_cpu_s(os.getpid())
        assert own >= 0.35
        assert tree >= own + 0.9 * time.process_time() - 0.05  # this process (all its threads) and the child
    finally:
        child.kill()
        child.wait()
    assert process_tree_cpu_s(child.pid) is None and process_tree_cpu_s(None) is None  # gone; no process
