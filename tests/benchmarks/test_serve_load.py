"""benchmarks.serve_load: the load generator's logic (bounds, percentiles, interleaving, ratios, table and JSON)
against fake clients and a local runner, and one tiny served round where the bundled tritonserver runs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from benchmarks.outputs import is_own_output
from benchmarks.serve_load import (
    EMBEDDED,
    MAX_CONCURRENCY,
    SERVED_BATCHING,
    SERVED_NO_BATCHING,
    ClipLengths,
    Target,
    check_loopback_url,
    embedded_target,
    main,
    make_requests,
    measure,
    process_tree_cpu_s,
    result_markdown,
    run_load,
    schedule,
    summarize,
    write_outputs,
)
from benchmarks.triton_server import free_port


def test_clip_lengths_and_requests():
    assert ClipLengths.parse("1-16").choices == tuple(range(1, 17))
    assert ClipLengths.parse("8").describe() == "T = 8"
    assert ClipLengths.parse("4,8,16").max == 16
    assert "mean 8.5" in ClipLengths.parse("1-16").describe()
    for bad in ("x", "0-4", "5-2", "", "1,,2"):
        with pytest.raises(ValueError, match="valid forms"):
            ClipLengths.parse(bad)
    pool = make_requests(ClipLengths.parse("2,5"), (16, 12), batch=3, pool=20, seed=1)
    assert len(pool) == 20
    for frames, lengths in pool:
        assert frames.dtype == np.float32 and lengths.dtype == np.int32
        assert frames.shape == (3, int(lengths.max()), 3, 16, 12) and set(lengths) <= {2, 5}
        assert np.abs(frames).sum() > 0  # random frames, never zeros
    assert {int(t) for _, ls in pool for t in ls} == {2, 5}  # both lengths drawn
    again = make_requests(ClipLengths.parse("2,5"), (16, 12), batch=3, pool=20, seed=1)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(pool, again, strict=True))  # seeded


def test_only_loopback_urls():
    check_loopback_url("grpc://127.0.0.1:8001/cnn_bilstm")
    check_loopback_url("http://localhost:8000/cnn_bilstm")
    with pytest.raises(ValueError, match="only to this machine.*'10.0.0.5'"):
        check_loopback_url("grpc://10.0.0.5:8001/cnn_bilstm")
    with pytest.raises(ValueError, match="grpc:// or http://"):
        check_loopback_url("https://127.0.0.1:8000/cnn_bilstm")
    with pytest.raises(ValueError, match="names no model"):
        check_loopback_url("grpc://127.0.0.1:8001")


def test_schedule_interleaves_every_target_each_round():
    targets, cs = ["a", "b", "c"], [1, 8, 16]
    plan = schedule(targets, cs, rounds=6, seed=3)
    assert len(plan) == 6 * 3 * 3
    for r in range(6):
        mine = [(c, t) for rr, c, t in plan if rr == r]
        assert sorted(mine) == sorted((c, t) for c in cs for t in targets)  # each once per round
        assert [c for c, _ in mine] == [c for c in cs for _ in targets]  # a concurrency's targets back to back
    firsts = {plan[i][2] for i in range(0, len(plan), 3)}
    assert firsts == set(targets)  # the order is shuffled: no target always goes first
    assert schedule(targets, cs, 6, seed=3) == plan


def _sleeper(ms: float, calls: list):
    def infer(frames, lengths):
        calls.append(threading.get_ident())
        time.sleep(ms / 1e3)
    return infer


def test_run_load_bounds_and_counts():
    requests = make_requests(ClipLengths.parse("1-3"), (4, 4), batch=2, pool=5)
    calls = []
    run = run_load([_sleeper(1, calls) for _ in range(4)], requests, duration_s=30, max_requests=40)
    assert run["requests"] == 40 == len(calls) == len(run["latency_ms"])  # the request bound, exactly
    assert run["clips"] == 80 and run["errors"] == 0
    assert len(set(calls)) == 4  # every client thread sent requests
    assert run["elapsed_s"] < 10 and run["requests_per_s"] == pytest.approx(40 / run["elapsed_s"])
    assert all(x >= 1.0 for x in run["latency_ms"])  # each timed call slept 1 ms

    t0 = time.perf_counter()
    run = run_load([_sleeper(5, [])], requests, duration_s=0.3)
    assert time.perf_counter() - t0 < 0.3 + 0.5  # the time bound: stops after the duration (and one call)
    assert 0 < run["requests"] <= 0.3 / 5e-3 + 1
    with pytest.raises(ValueError):
        run_load([], requests, duration_s=1)
    with pytest.raises(ValueError):
        run_load([_sleeper(1, [])], requests, duration_s=0)


def test_a_failing_client_stops_its_thread_and_is_reported():
    requests = make_requests(ClipLengths.parse("2"), (4, 4), pool=3)
    count = [0]

    def flaky(frames, lengths):
        count[0] += 1
        if count[0] == 3:
            raise ConnectionError("server went away")
    good = []
    run = run_load([flaky, _sleeper(1, good)], requests, duration_s=0.3)
    assert run["errors"] == 1 and run["first_error"] == "ConnectionError: server went away"
    assert count[0] == 3  # the failing thread stopped at its failure
    assert run["requests"] == 2 + len(good)  # the other thread went on


def _run(target, c, r, rps, latencies, p99, inferences=None, executions=None):
    run = {"target": target, "concurrency": c, "round": r, "requests_per_s": rps, "clips_per_s": 2 * rps,
           "requests": len(latencies), "errors": 0, "first_error": None, "load_average_1min": 1.0, "p99_ms": p99}
    if inferences is not None:
        run.update(inferences=inferences, executions=executions)
    return run


def test_summary_percentiles_ratios_and_target():
    runs, samples = [], {}
    lat = list(range(1, 101))  # ms
    for r, (e, s) in enumerate([(100, 100), (100, 120), (100, 90)]):
        for c in (1, 8):
            runs.append(_run(EMBEDDED, c, r, e, lat, p99=100))
            # Per round, served's p99 is 2x the embedded one at concurrency 1 and 0.5x, 0.4x, 1.2x at 8.
            p99 = 200 if c == 1 else [50, 40, 120][r]
            runs.append(_run(SERVED_BATCHING, c, r, s, lat, p99=p99, inferences=40, executions=10))
    samples = {(EMBEDDED, 1): lat, (EMBEDDED, 8): lat * 3, (SERVED_BATCHING, 1): [2 * x for x in lat],
               (SERVED_BATCHING, 8): [x / 2 for x in lat]}
    s = summarize(runs, samples, baseline=EMBEDDED)
    row = next(x for x in s["rows"] if x["target"] == SERVED_BATCHING and x["concurrency"] == 8)
    assert row["requests_per_s"] == 100 and (row["requests_per_s_min"], row["requests_per_s_max"]) == (90, 120)
    assert row["clips_per_s"] == 200 and row["rounds"] == 3
    assert row["p99_ms"] == pytest.approx(99.01 / 2) and row["p50_ms"] == pytest.approx(25.25)
    assert row["clips_per_execution"] == 4.0 and (row["inferences"], row["executions"]) == (120, 30)
    assert next(x for x in s["rows"] if x["target"] == EMBEDDED)["clips_per_execution"] is None
    by_c = {q["concurrency"]: q for q in s["ratios"]}
    assert set(by_c) == {1, 8}
    assert by_c[8]["throughput_ratio"] == pytest.approx(1.0)  # median of 1.0, 1.2, 0.9
    assert by_c[8]["per_round"] == pytest.approx([1.0, 1.2, 0.9])
    assert by_c[8]["p99_per_round"] == pytest.approx([0.5, 0.4, 1.2]) and by_c[8]["p99_ratio"] == pytest.approx(0.5)
    assert by_c[8]["p99_ratio_pooled"] == pytest.approx(0.5) and by_c[8]["meets_target"] is True
    assert by_c[1]["p99_ratio"] == pytest.approx(2.0) and by_c[1]["meets_target"] is None  # outside 8-16
    # A lower throughput at concurrency 8 misses the target even with the lower p99.
    slow = [dict(r, requests_per_s=r["requests_per_s"] * 0.8) if r["target"] == SERVED_BATCHING else r
            for r in runs]
    q8 = next(q for q in summarize(slow, samples, baseline=EMBEDDED)["ratios"] if q["concurrency"] == 8)
    assert q8["throughput_ratio"] == pytest.approx(0.8) and q8["meets_target"] is False


def test_measure_against_a_local_runner_and_the_outputs(tiny_export, tmp_path):
    shared = embedded_target(tiny_export / "model.onnx")
    import runtime

    # A second target over the same model, one runner per client thread, with fake server counters.
    counters = [0, 0]

    def open_client():
        runner = runtime.load(tiny_export / "model.onnx")
        infer = runner.infer

        def counted(frames, lengths):
            counters[0] += len(lengths)
            counters[1] += 1
            return infer(frames, lengths)
        runner.infer = counted
        return runner
    per_thread = Target("per-thread", open_client, shared=False, stats=lambda: tuple(counters))
    requests = make_requests(ClipLengths.parse("1-4"), shared.runner().input_spec.frame_size, batch=2, pool=8)
    try:
        result = measure([shared, per_thread], requests, [1, 2], rounds=2, duration_s=0.2, warmup_s=0.1,
                         gap_s=0.0, seed=1, baseline=EMBEDDED)
    finally:
        shared.close()
        per_thread.close()
    assert len(shared._runners) == 0 and len(result["runs"]) == 2 * 2 * 2
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in result["runs"])
    assert all(r["clips"] == 2 * r["requests"] for r in result["runs"])
    rows = {(r["target"], r["concurrency"]): r for r in result["summary"]["rows"]}
    assert rows[("per-thread", 2)]["clips_per_execution"] == 2.0  # two clips per call, counted per run
    assert "inferences" not in next(r for r in result["runs"] if r["target"] == EMBEDDED)
    assert {(q["target"], q["concurrency"]) for q in result["summary"]["ratios"]} == {("per-thread", 1),
                                                                                     ("per-thread", 2)}
    # CPU per clip: this process's (both targets run here), no server's (neither target names one)
    assert all(r["client_cpu_ms_per_clip"] > 0 and r["server_cpu_ms_per_clip"] is None for r in rows.values())

    env = {"device_name": "Test CPU (2 cores)", "python": "3.x", "onnxruntime": "1.x", "numpy": "2.x",
           "date": "2026-12-01 07:00 UTC", "load_average_1min": 1.5, "load_average_1min_end": 1.7}
    text = result_markdown(result, env, title="tiny", setup="Each request: ...")
    assert text.startswith("# Serving load: tiny\n") and "load average: 1.5 at the start, 1.7 at the end" in text
    table = [line for line in text.splitlines() if line.startswith(("| embedded |", "| per-thread |"))]
    assert len(table) == 4 + 2  # 2 targets x 2 concurrencies, then 2 ratio rows
    per_thread_2 = rows[("per-thread", 2)]
    assert f"| 2.00 ({per_thread_2['inferences']}/{per_thread_2['executions']}) | " \
           f"{per_thread_2['client_cpu_ms_per_clip']:.2f} |" in text
    write_outputs(tmp_path, "tiny", result, env, text, "tiny")
    data = json.loads((tmp_path / "tiny.json").read_text())
    assert data["environment"]["load_average_1min"] == 1.5
    assert data["result"]["summary"]["rows"][0]["requests_per_s"] > 0
    assert (tmp_path / "tiny.md").read_text() == text
    for suffix in ("json", "md", "png"):
        assert is_own_output(tmp_path / f"tiny.{suffix}")  # a rerun may replace them without --force


def test_measure_refuses_bad_plans(tiny_export):
    target = embedded_target(tiny_export / "model.onnx")
    requests = make_requests(ClipLengths.parse("2"), (16, 16), pool=2)
    with pytest.raises(ValueError, match=f"concurrency must be 1..{MAX_CONCURRENCY}"):
        measure([target], requests, [0])
    with pytest.raises(ValueError, match="distinct names"):
        measure([target, target], requests, [1])
    with pytest.raises(ValueError, match="baseline 'x'"):
        measure([target], requests, [1], baseline="x")


@pytest.mark.parametrize("argv, message", [
    (["grpc://10.1.2.3:8001/m"], "only to this machine"),
    ([], "either a URL"),
    (["grpc://127.0.0.1:1/m", "--compare", "."], "either a URL"),
    (["grpc://127.0.0.1:1/m", "--concurrency", "1,100"], "--concurrency must be 1..64"),
    (["grpc://127.0.0.1:1/m", "--lengths", "0-3"], "lengths >= 1"),
    (["grpc://127.0.0.1:1/m", "--rounds", "50", "--duration", "30"], "over --time-limit 900"),
    (["--compare", "/nonexistent"], "has no model.onnx"),
])
def test_cli_refuses_bad_arguments_before_any_load(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_cli_against_a_server_that_is_down(capsys):
    port = free_port()  # nothing listens on it
    assert main([f"http://127.0.0.1:{port}/cnn_bilstm", "--duration", "1", "--rounds", "1"]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_one_tiny_served_round(tiny_export, server_python, tmp_path):
    python = server_python
    code = main(["--compare", str(tiny_export), "--server-python", python, "--concurrency", "1,4", "--lengths",
                 "1-8", "--max-time", "8", "--duration", "0.5", "--rounds", "1", "--warmup", "0.3", "--gap-ms", "0",
                 "--out", str(tmp_path), "--prefix", "tiny"])
    assert code == 0
    result = json.loads((tmp_path / "tiny.json").read_text())["result"]
    rows = {(r["target"], r["concurrency"]): r for r in result["summary"]["rows"]}
    assert set(rows) == {(t, c) for t in (EMBEDDED, SERVED_BATCHING, SERVED_NO_BATCHING) for c in (1, 4)}
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in rows.values())
    assert rows[(SERVED_NO_BATCHING, 4)]["clips_per_execution"] == 1.0  # no batcher: one clip per execution
    assert rows[(SERVED_BATCHING, 1)]["clips_per_execution"] == 1.0  # one client: nothing to batch
    assert rows[(EMBEDDED, 4)]["clips_per_execution"] is None
    # the server's CPU (its stub's included) is counted for the served targets only
    assert rows[(EMBEDDED, 4)]["server_cpu_ms_per_clip"] is None
    assert all(rows[(t, c)]["server_cpu_ms_per_clip"] > 0
               for t in (SERVED_BATCHING, SERVED_NO_BATCHING) for c in (1, 4))
    assert len(result["summary"]["ratios"]) == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process CPU times come from Linux's /proc")
def test_process_tree_cpu_counts_the_descendants():
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\nprint(1, flush=True)\n" \
           "time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", burn], stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()  # it has burnt 0.4 s
        own, tree = process_tree_cpu_s(child.pid), process_tree_cpu_s(__import__("os").getpid())
        assert own >= 0.35
        assert tree >= own + 0.9 * time.process_time() - 0.05  # this process (all its threads) and the child
    finally:
        child.kill()
        child.wait()
    assert process_tree_cpu_s(child.pid) is None  # gone
