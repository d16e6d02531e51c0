#!/usr/bin/env python3
"""Seedable chaos runs against real `streamjob worker` processes (no cluster needed).

The checker job `sequence-check` (per-key consecutive sequence numbers -> running count per key ->
exactly-once file sink) runs on several worker processes that exchange records over TCP, with
snapshots in a local folder. This script plays the operator's part (a new attempt after every
failure, restoring the latest checkpoint) and injects failures; at the end `streamjob
verify-sequence` judges the committed output from the data alone: lost, duplicated, out of order.

Scenarios (each run from one seed, so a failing run is reproduced by its command line):
  kill     SIGKILL a random worker at a random time (while checkpoints are in flight, right after
           an attempt starts = during restore, or later), many times per run
  zombie   SIGSTOP the only worker of an attempt, start the next attempt, SIGCONT the old one once
           the new one runs: the old attempt must neither commit output nor complete a snapshot
  corrupt  after a kill, flip bytes in a state file of the newest checkpoint: the next attempt must
           skip it, say so, and restore an older one

Usage:
  tests/chaos/chaos.py [--seed N] [--kills K] [--scenarios kill,zombie,corrupt] [--bin PATH]
  tests/chaos/chaos.py --seeds 1,2 --kills 25          (what CI runs: >= 50 worker kills)
  tests/chaos/chaos.py --seeds 1-20 --kills 50         (a longer soak)

Prints a summary table (scenario, seed, injections, records, lost, duplicated, recoveries, recovery
time p50/p99) and exits non-zero if any run lost or duplicated a record or misbehaved. Failing runs
keep their folder (logs of every worker process, the verifier report) and print its path.
"""

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[2]


class ChaosError(Exception):
    """The run itself misbehaved (a hung worker, an attempt that never started, ...)."""


def find_binary(given):
    if given:
        return given
    for candidate in [os.environ.get("STREAMJOB_BIN"),
                      os.environ.get("CARGO_TARGET_DIR") and pathlib.Path(os.environ["CARGO_TARGET_DIR"]) / "debug/streamjob",
                      REPO / "target/debug/streamjob"]:
        if candidate and pathlib.Path(candidate).is_file():
            return str(candidate)
    sys.exit("no streamjob binary: build it (cargo build) or pass --bin")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Run:
    """One job run (many attempts) in its own folder."""

    def __init__(self, binary, work, scenario, seed, workers, parallelism, keys, events, rate):
        self.binary, self.work, self.scenario, self.seed = binary, work, scenario, seed
        self.workers, self.keys, self.events = workers, keys, events
        self.rng = random.Random(f"{scenario}-{seed}")
        self.out = work / "output"
        self.snap = work / "snapshots"
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.attempt = 0
        self.injections = 0
        self.recoveries = []
        self.notes = []
        self.manifest = work / "job.yaml"
        self.manifest.write_text(f"""apiVersion: streamjob.io/v1alpha1
kind: StreamJob
metadata: {{name: chaos-{scenario}}}
spec:
  parallelism: {parallelism}
  workers: {workers}
  maxParallelism: 32
  job:
    name: sequence-check
    params: {{keys: {keys}, events: {events}, rate: {rate}, splits: 8, output: {self.out}}}
  checkpoint: {{interval: 200ms, timeout: 10s, minPause: 50ms, tolerableFailures: 3}}
  storage: {{path: {self.snap}}}
""")

    def start_attempt(self, workers=None):
        """Start every worker of the next attempt; returns [(process, control port)]."""
        workers = workers or self.workers
        self.attempt += 1
        exchange = [free_port() for _ in range(workers)]
        procs = []
        for w in range(workers):
            control = free_port()
            cmd = [self.binary, "worker", "--job-file", str(self.manifest),
                   "--attempt", str(self.attempt), "--restore", "latest",
                   "--listen", f"127.0.0.1:{control}",
                   "--worker-index", str(w), "--workers", str(workers),
                   "--exchange-listen", f"127.0.0.1:{exchange[w]}", "--form-timeout-seconds", "20"]
            if w > 0:
                cmd += ["--coordinator", f"127.0.0.1:{exchange[0]}"]
            log = open(self.logs / f"attempt-{self.attempt}-worker-{w}.log", "w")
            env = dict(os.environ, STREAMJOB_CONTROL_TOKEN="chaos", STREAMJOB_LOG="info")
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), control))
        return procs

    def wait_running(self, procs, timeout=30.0):
        """Seconds until worker 0 reports the attempt running (None if it ended first)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            s = status(procs[0][1])
            if s and s.get("attempt") == self.attempt and s.get("state") == "running":
                return time.monotonic() - start
            if all(p.poll() is not None for p, _ in procs):
                return None
            time.sleep(0.02)
        raise ChaosError(f"attempt {self.attempt} did not start within {timeout}s")

    def wait_exit(self, procs, timeout, what):
        deadline = time.monotonic() + timeout
        for p, _ in procs:
            left = max(0.1, deadline - time.monotonic())
            try:
                p.wait(left)
            except subprocess.TimeoutExpired:
                for q, _ in procs:
                    q.kill()
                raise ChaosError(f"attempt {self.attempt}: {what}: a worker was still running after {timeout}s")
        return [p.returncode for p, _ in procs]

    def newest_checkpoint_file(self):
        dirs = sorted(d for d in (self.snap / "checkpoints").glob("*") if (d / "_manifest.json").is_file())
        for d in reversed(dirs):
            files = sorted(f for f in d.rglob("*.state"))
            if files:
                return d, files[0]
        return None, None

    def verify(self):
        proc = subprocess.run([self.binary, "verify-sequence", "--output", str(self.out), "--keys",
                               str(self.keys), "--events", str(self.events), "--json"],
                              capture_output=True, text=True)
        (self.work / "verify.json").write_text(proc.stdout)
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1]), proc.returncode
        except (ValueError, IndexError):
            raise ChaosError(f"verify-sequence printed no report: {proc.stderr[-500:]}")

    def finish(self):
        """A last attempt without failures runs the job to its end."""
        t0 = time.monotonic()
        procs = self.start_attempt()
        if self.wait_running(procs, timeout=60) is not None and self.pending_since_kill:
            self.recoveries.append(time.monotonic() - t0 + self.pending_since_kill)
        codes = self.wait_exit(procs, 300, "final attempt")
        if any(codes):
            raise ChaosError(f"the final attempt {self.attempt} failed with exit codes {codes}")

    # --- scenarios -----------------------------------------------------------------------------

    def kill(self, kills):
        for _ in range(kills):
            t0 = time.monotonic()
            procs = self.start_attempt()
            recovered = self.wait_running(procs)
            if recovered is None:
                raise ChaosError(f"attempt {self.attempt} ended before it ran (see {self.logs})")
            if self.attempt > 1:
                self.recoveries.append(time.monotonic() - t0 + self.pending_since_kill)
            # Mostly while checkpoints run; sometimes right after the start (restore, first barrier).
            delay = self.rng.uniform(0.0, 0.15) if self.rng.random() < 0.25 else self.rng.uniform(0.2, 1.5)
            time.sleep(delay)
            victim = self.rng.randrange(len(procs))
            if procs[victim][0].poll() is not None:
                self.notes.append(f"attempt {self.attempt} ended before its kill")
                self.wait_exit(procs, 30, "after an early end")
                self.pending_since_kill = 0.0
                return
            procs[victim][0].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            self.injections += 1
            codes = self.wait_exit(procs, 30, f"after worker {victim} was killed")
            survivors = [c for i, c in enumerate(codes) if i != victim]
            if any(c == 0 for c in survivors):
                raise ChaosError(f"attempt {self.attempt}: a worker exited 0 after worker {victim} was killed")
            # Time from the kill until every worker of the attempt is gone counts into recovery.
            self.pending_since_kill = time.monotonic() - killed_at

    def zombie(self, rounds):
        for _ in range(rounds):
            procs = self.start_attempt(workers=1)
            if self.wait_running(procs) is None:
                raise ChaosError(f"attempt {self.attempt} ended before it ran")
            time.sleep(self.rng.uniform(0.3, 1.0))
            zombie = procs[0][0]
            zombie.send_signal(signal.SIGSTOP)
            self.injections += 1
            fenced_attempt = self.attempt
            t0 = time.monotonic()
            successor = self.start_attempt(workers=1)
            if self.wait_running(successor) is None:
                raise ChaosError(f"attempt {self.attempt} ended before it ran")
            self.recoveries.append(time.monotonic() - t0)
            time.sleep(self.rng.uniform(0.2, 0.8))
            zombie.send_signal(signal.SIGCONT)
            try:
                code = zombie.wait(30)
            except subprocess.TimeoutExpired:
                zombie.kill()
                raise ChaosError(f"zombie attempt {fenced_attempt} kept running after it was fenced")
            if code == 0:
                raise ChaosError(f"zombie attempt {fenced_attempt} exited 0 (it should stop as fenced)")
            successor[0][0].send_signal(signal.SIGKILL)
            self.wait_exit(successor, 30, "successor")
            self.pending_since_kill = 0.0

    def corrupt(self, rounds):
        for _ in range(rounds):
            procs = self.start_attempt()
            if self.wait_running(procs) is None:
                raise ChaosError(f"attempt {self.attempt} ended before it ran")
            time.sleep(self.rng.uniform(0.6, 1.2))
            procs[0][0].send_signal(signal.SIGKILL)
            self.wait_exit(procs, 30, "after the kill")
            directory, victim = self.newest_checkpoint_file()
            if victim is None:
                self.notes.append("no checkpoint to corrupt yet")
                continue
            data = bytearray(victim.read_bytes())
            if not data:
                continue
            pos = self.rng.randrange(len(data))
            data[pos] ^= 0xFF
            victim.write_bytes(bytes(data))
            self.injections += 1
            t0 = time.monotonic()
            nxt = self.start_attempt()
            if self.wait_running(nxt) is None:
                raise ChaosError(f"attempt {self.attempt} ended before it ran")
            self.recoveries.append(time.monotonic() - t0)
            s = status(nxt[0][1]) or {}
            restored = s.get("restoredFrom") or ""
            if directory.name in restored:
                raise ChaosError(f"attempt {self.attempt} restored the corrupted checkpoint {directory.name}")
            log = (self.logs / f"attempt-{self.attempt}-worker-0.log").read_text(errors="replace")
            if "skipped" not in log:
                raise ChaosError(f"attempt {self.attempt} did not report skipping {directory.name}")
            nxt[0][0].send_signal(signal.SIGKILL)
            self.wait_exit(nxt, 30, "after the check")
            self.pending_since_kill = 0.0


def run_one(binary, scenario, seed, kills, workers, keep_root):
    work = pathlib.Path(tempfile.mkdtemp(prefix=f"chaos-{scenario}-{seed}-", dir=keep_root))
    # Enough records that the run outlasts its injections at this rate.
    rate = 20000
    injections = {"kill": kills, "zombie": max(1, kills // 10), "corrupt": max(1, kills // 10)}[scenario]
    events = rate * (2 + injections) * 2
    run = Run(binary, work, scenario, seed, workers if scenario != "zombie" else 1,
              4, 50, events, rate)
    run.pending_since_kill = 0.0
    row = {"scenario": scenario, "seed": seed, "folder": str(work)}
    started = time.monotonic()
    try:
        getattr(run, scenario)(injections)
        run.finish()
        report, code = run.verify()
        row.update(report)
        row["ok"] = code == 0 and report.get("lost") == 0 and report.get("duplicated") == 0
    except ChaosError as e:
        row["ok"] = False
        row["error"] = str(e)
    row.update(injections=run.injections, attempts=run.attempt, recoveries=len(run.recoveries),
               recovery_p50=percentile(run.recoveries, 0.5), recovery_p99=percentile(run.recoveries, 0.99),
               seconds=time.monotonic() - started, notes=run.notes)
    if row["ok"]:
        shutil.rmtree(work, ignore_errors=True)
    return row


def parse_seeds(text):
    seeds = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            seeds.extend(range(int(a), int(b) + 1))
        else:
            seeds.append(int(part))
    return seeds


def fmt_s(v):
    return "-" if v is None else f"{v:.2f}s"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, help="one seed (same as --seeds N)")
    ap.add_argument("--seeds", default="1", help="seeds: 1,2,5 or 1-20 (default 1)")
    ap.add_argument("--kills", type=int, default=25, help="worker kills per kill run (default 25)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes per attempt (default 2)")
    ap.add_argument("--scenarios", default="kill,zombie,corrupt")
    ap.add_argument("--bin", help="streamjob binary (default: target/debug/streamjob)")
    ap.add_argument("--keep-dir", help="where run folders go (default: the system temp folder)")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    args = ap.parse_args()
    binary = find_binary(args.bin)
    seeds = [args.seed] if args.seed is not None else parse_seeds(args.seeds)
    rows = []
    for seed in seeds:
        for scenario in args.scenarios.split(","):
            row = run_one(binary, scenario, seed, args.kills, args.workers, args.keep_dir)
            verdict = "ok" if row["ok"] else "FAILED"
            print(f"[chaos] {scenario} seed {seed}: {verdict} ({row['injections']} injections, "
                  f"{row.get('committed', '?')} records, lost {row.get('lost', '?')}, duplicated "
                  f"{row.get('duplicated', '?')}, {row['seconds']:.0f}s)"
                  + (f"; {row['error']}" if "error" in row else "")
                  + ("" if row["ok"] else f"; logs kept in {row['folder']}"), flush=True)
            rows.append(row)
    print()
    print("| scenario | seed | injections | records expected | committed | lost | duplicated | out of order | recoveries | recovery p50 | recovery p99 | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['seed']} | {r['injections']} | {r.get('expected', '-')} | {r.get('committed', '-')} "
              f"| {r.get('lost', '-')} | {r.get('duplicated', '-')} | {r.get('out_of_order', '-')} | {r['recoveries']} "
              f"| {fmt_s(r['recovery_p50'])} | {fmt_s(r['recovery_p99'])} | {'ok' if r['ok'] else 'FAILED'} |")
    kills = sum(r["injections"] for r in rows if r["scenario"] == "kill")
    print(f"\nworker kills in total: {kills}; recovery = kill until the next attempt's worker 0 runs "
          f"(restore done), including this script's restart delay (none) and process start")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
