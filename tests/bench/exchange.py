#!/usr/bin/env python3
"""Our side alone: what the TCP exchange between worker processes costs. The same job at the same
parallelism (2) runs in one process (`streamjob run`, in-process channels) and as two worker
processes on this machine (`streamjob worker`, one subtask each: every record a hash exchange sends
to the other subtask crosses a TCP link). Prints a markdown table, medians of RUNS:

  tests/bench/exchange.py [--bin BINARY] [--runs 3] [--events N]

Jobs: `nexmark-q0` has no exchange (each worker runs a whole chain): the control row, it shows what
two processes cost without any exchange. `windowed-count` sends every bid through a hash exchange
keyed by auction, so half of the bids cross the link. `large-state` sends every record through a
hash exchange to keyed state (100 B values, 1 M keys).

How the workers are timed: both control APIs are polled every 20 ms; the rate is the growth of the
summed `sourceRecords` between the first sample with records and the last sample before the job
finished (start-up, formation and the final checkpoint are left out). The one-process runs use
`--stats-json` `runMillis` (also without start-up). Checkpoints every 10 s, sink=discard. Asserts
nothing about speed.
"""
import argparse, json, os, pathlib, socket, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import find_streamjob  # noqa: E402

JOBS = [
    ("nexmark-q0", 300_000_000, ""),
    ("windowed-count", 60_000_000, ""),
    ("large-state", 30_000_000, ", keys: 1000000, value-bytes: 100"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifest(work, job, events, extra):
    path = work / "job.yaml"
    path.write_text(f"""apiVersion: streamjob.io/v1alpha1
kind: StreamJob
metadata: {{name: exchange-bench}}
spec:
  parallelism: 2
  job: {{name: {job}, params: {{events: {events}, sink: discard{extra}}}}}
  checkpoint: {{interval: 10s}}
  storage: {{path: {work}/snap}}
""")
    return path


def one_process(binary, job, events, extra):
    with tempfile.TemporaryDirectory(prefix="xbench-") as tmp:
        work = pathlib.Path(tmp)
        path = manifest(work, job, events, extra)
        subprocess.run([binary, "run", str(path), "--quiet", "--stats-json", str(work / "s.json")],
                       check=True, capture_output=True)
        stats = json.loads((work / "s.json").read_text())
        return stats["sourceRecords"] / (stats["runMillis"] / 1000)


def status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=1) as r:
            return json.load(r)
    except Exception:
        return None


def two_workers(binary, job, events, extra):
    with tempfile.TemporaryDirectory(prefix="xbench-") as tmp:
        work = pathlib.Path(tmp)
        path = manifest(work, job, events, extra)
        exchange = [free_port(), free_port()]
        control = [free_port(), free_port()]
        procs = []
        env = dict(os.environ, STREAMJOB_CONTROL_TOKEN="bench")
        for w in range(2):
            cmd = [binary, "worker", "--job-file", str(path), "--attempt", "1", "--restore", "none",
                   "--listen", f"127.0.0.1:{control[w]}", "--worker-index", str(w), "--workers", "2",
                   "--exchange-listen", f"127.0.0.1:{exchange[w]}", "--form-timeout-seconds", "30"]
            if w > 0:
                cmd += ["--coordinator", f"127.0.0.1:{exchange[0]}"]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        samples = []  # (time, summed source records)
        try:
            while any(p.poll() is None for p in procs):
                now = time.monotonic()
                reports = [status(c) for c in control]
                if all(r and r["state"] == "running" for r in reports):
                    total = sum(r["sourceRecords"] for r in reports)
                    if total > 0 and total < events:
                        samples.append((now, total))
                time.sleep(0.02)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        if any(p.returncode != 0 for p in procs):
            raise SystemExit(f"{job}: a worker failed: {[p.returncode for p in procs]}")
        if len(samples) < 10:
            raise SystemExit(f"{job}: only {len(samples)} samples; raise --events")
        (t0, r0), (t1, r1) = samples[0], samples[-1]
        return (r1 - r0) / (t1 - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--events", type=float, default=1.0, help="scale the event counts by this factor")
    args = ap.parse_args()
    binary = find_streamjob(args.bin)
    print(f"| job | events | one process, p=2 (events/s, median of {args.runs}) | two worker processes over TCP, p=2 | two workers / one process |")
    print("|---|---|---|---|---|")
    for job, events, extra in JOBS:
        events = int(events * args.events)
        local, cluster = [], []
        for _ in range(args.runs):  # alternate, so a noisy neighbour slows both alike
            local.append(one_process(binary, job, events, extra))
            cluster.append(two_workers(binary, job, events, extra))
        lm, cm = statistics.median(local), statistics.median(cluster)
        print(f"| {job} | {events:,} | {lm/1e6:.2f} M ({min(local)/1e6:.2f}-{max(local)/1e6:.2f}) "
              f"| {cm/1e6:.2f} M ({min(cluster)/1e6:.2f}-{max(cluster)/1e6:.2f}) | {cm/lm:.2f} |", flush=True)


if __name__ == "__main__":
    main()
