#!/usr/bin/env python3
"""Our side alone: the throughput cost of checkpoints every 1 s, with runs long enough (several
seconds) for many periodic checkpoints; compare.py's event counts are sized for the Flink side and
our runs there end before the first periodic checkpoint. Prints a markdown table (medians of
CKCOST_RUNS runs, default 5; the runs without and with checkpoints alternate). Besides events/s it
shows the spread (slowest-fastest run) and the CPU time (user + system, all threads) per event: when
the spread of the runs without checkpoints is wider than the measured cost, the cost is noise.
  tests/bench/checkpoint_cost.py [BINARY]      (default target/release/streamjob)
Environment: CKCOST_JOBS=windowed-count,nexmark-q5 runs only those jobs; CKCOST_PARAMS="max-drift: off"
adds job parameters (e.g. to measure without watermark alignment); CKCOST_RUNS=7 runs each side 7 times.
"""
import json, os, resource, subprocess, tempfile, pathlib, statistics, sys
BIN = sys.argv[1] if len(sys.argv) > 1 else str(pathlib.Path(__file__).resolve().parents[2] / "target/release/streamjob")
EXTRA = ", " + os.environ["CKCOST_PARAMS"] if os.environ.get("CKCOST_PARAMS") else ""
ONLY = [j for j in os.environ.get("CKCOST_JOBS", "").split(",") if j]
RUNS = int(os.environ.get("CKCOST_RUNS", "5"))
def children_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
def run(job, events, interval, p=2):
    w = pathlib.Path(tempfile.mkdtemp(prefix="ckcost-"))
    (w/"job.yaml").write_text(f"""apiVersion: streamjob.io/v1alpha1
kind: StreamJob
metadata: {{name: ckcost}}
spec:
  parallelism: {p}
  job: {{name: {job}, params: {{events: {events}, sink: discard{EXTRA}}}}}
  checkpoint: {{interval: {interval}}}
  storage: {{path: {w}/snap}}
""")
    cpu_before = children_cpu_seconds()
    subprocess.run([BIN, "run", str(w/"job.yaml"), "--quiet", "--stats-json", str(w/"s.json")], check=True, capture_output=True)
    cpu_ns_per_event = (children_cpu_seconds() - cpu_before) * 1e9 / events
    s = json.loads((w/"s.json").read_text())
    subprocess.run(["rm", "-rf", str(w)])
    d = sorted(c["durationMs"] for c in s["checkpoints"])
    sz = sorted(c["sizeBytes"] for c in s["checkpoints"])
    return s["sourceRecords"] / (s["runMillis"] / 1000), len(d), d[len(d)//2] if d else None, d[min(len(d)-1, round(0.99*(len(d)-1)))] if d else None, sz[len(sz)//2] if sz else None, cpu_ns_per_event
print(f"| job | events | p | checkpoints | events/s (median of {RUNS}) | slowest-fastest | CPU ns/event (median) | checkpoints/run | duration p50 | p99 | size p50 |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
# Event counts sized for about 8 s or more per run at p=2 (q0 runs at about 135 M events/s).
for job, events in [("nexmark-q0", 1_000_000_000), ("nexmark-q5", 100_000_000), ("nexmark-q7", 400_000_000), ("nexmark-q8", 300_000_000), ("windowed-count", 100_000_000)]:
    if ONLY and job not in ONLY:
        continue
    # Off and on alternate (off, on, off, on, ...) so a noisy neighbour slows both sides alike.
    runs = {"1h": [], "1s": []}
    for _ in range(RUNS):
        for interval in runs:
            runs[interval].append(run(job, events, interval))
    base = None
    for interval, rs in runs.items():
        eps = statistics.median(r[0] for r in rs)
        cpu = statistics.median(r[5] for r in rs)
        mid = sorted(rs, key=lambda r: r[0])[len(rs)//2]
        cost = "" if base is None else f" ({(1 - eps/base[0])*100:+.1f} % cost)"
        cpu_cost = "" if base is None else f" ({(cpu/base[1] - 1)*100:+.1f} %)"
        if base is None: base = (eps, cpu)
        spread = f"{min(r[0] for r in rs)/1e6:.2f}-{max(r[0] for r in rs)/1e6:.2f} M"
        print(f"| {job} | {events:,} | 2 | {'off' if interval=='1h' else '1 s'} | {eps/1e6:.2f} M{cost} | {spread} | {cpu:.1f}{cpu_cost} | {mid[1]} | {mid[2]} ms | {mid[3]} ms | {mid[4]} B |", flush=True)
