#!/usr/bin/env python3
"""Seedable chaos runs against real `streamjob worker` processes (no cluster needed).

The checker job `sequence-check` (per-key consecutive sequence numbers -> running count per key ->
exactly-once file sink) runs on several worker processes that exchange records over TCP, with
snapshots in a local folder. This script plays the operator's part (a new attempt after every
failure, restoring the latest checkpoint) and injects failures; at the end `streamjob
verify-sequence` judges the committed output from the data alone: lost, duplicated, out of order.

Scenarios (each run from one seed, so a failing run is reproduced by its command line):
  kill       SIGKILL a random worker at a random time (while checkpoints are in flight, right after
             an attempt starts = during restore, or later), many times per run
  zombie     SIGSTOP the only worker of an attempt, start the next attempt, SIGCONT the old one once
             the new one runs: the old attempt must neither commit output nor complete a snapshot
  corrupt    after a kill, flip bytes in a state file of the newest checkpoint: the next attempt must
             skip it, say so, and restore an older one
  s3-outage  snapshots in S3 (a real s3s-fs server process); the server is killed for --outage
             seconds (30) and started again on the same port and data folder. With
             tolerableFailures above the failures an outage causes (100000 here: checkpoints
             fail about 5 times a second while S3 is down), the attempt must ride it out:
             every checkpoint of the outage fails and is aborted (checkpoints_failed in /metrics
             grows, lastCheckpoint in /v1/status stays put), the attempt stays running and its
             sources keep reading; once S3 is back a newer checkpoint completes. Then a worker is
             killed and the next attempt must restore a complete checkpoint (manifest and every
             file verified here) at least as new as the last one the status reported. A second
             outage runs with tolerableFailures 3 (the default): the engine fails the attempt once
             4 checkpoints failed in a row (a few seconds in: the S3 client retries each request
             first), S3 stays down --outage/3 seconds more while this script plays the operator
             and restarts attempts, which must exit non-zero without running (they cannot record
             themselves), and the first attempt after S3 is back restores a complete checkpoint
             at least as new as the last one reported.
  s3-faults  snapshots in S3 through a fault-injecting proxy (s3_proxy.py, seeded; 8% of requests
             by default, --fault-scale multiplies): 500 InternalError / 503 SlowDown, answers
             delayed 1-5 s, connections reset before forwarding or after (the answer is lost);
             --kills/5 (at least 3) worker kills, so restores read through the proxy too.
             Attempts that fail on their own (S3 errors the client's retries did not absorb) are
             restarted as the operator would. Every restore must be a complete checkpoint at least
             as new as the last one the status reported before the kill; prints the faults
             injected by kind. Every request and its fault is traced to logs/s3-proxy.log.
  Both S3 scenarios check every restore against the store as it was before the attempt started
  (no worker running): the restored folder has its manifest and every listed file has the listed
  size and CRC32C; partial folders (aborted or cut by a kill) must be passed over.

Usage:
  tests/chaos/chaos.py [--seed N] [--kills K] [--scenarios kill,zombie,corrupt,s3-outage,s3-faults]
                       [--outage SECONDS] [--fault-scale X] [--bin PATH] [--keep]
  tests/chaos/chaos.py --seeds 1,2 --kills 25          (what CI runs: >= 50 worker kills)
  tests/chaos/chaos.py --scenarios s3-outage,s3-faults --seeds 1   (CI too: the S3 scenarios)
  tests/chaos/chaos.py --seeds 1-20 --kills 50         (a longer soak)

The S3 scenarios need s3s-fs: $S3S_FS_BIN, else tests/tools/install-s3s-fs.sh (prints its path).
Workers get S3 settings the way the operator renders them into pods: S3_ENDPOINT, AWS_REGION,
S3_FORCE_PATH_STYLE, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (the worker reads the environment,
not spec.storage.s3.endpoint).

Prints a summary table (scenario, seed, injections, records, lost, duplicated, recoveries, recovery
time p50/p99) and exits non-zero if any run lost or duplicated a record or misbehaved. Failing runs
keep their folder (logs of every worker process, the verifier report) and print its path.
"""

import argparse
import json
import os
import pathlib
import random
import re
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
sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from s3_proxy import DEFAULT_RATES, FaultProxy  # noqa: E402  (stdlib only, next to this file)


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


def _ephemeral_low():
    try:
        return int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


PORTS = random.Random()  # not the run's seeded stream: port choice must not shift the injections


def free_port():
    """A port to listen on, below the ephemeral range: a port the kernel handed out for listening
    (bind 0) may be taken by an outgoing connection (S3 clients, the proxy) before the worker binds it."""
    low = _ephemeral_low()
    for _ in range(50):
        port = PORTS.randrange(10000, low) if low > 11000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def metrics(port):
    """The worker's Prometheus counters as {name: value} (None if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    """CRC-32C (Castagnoli), the checksum snapshot manifests record per file."""
    c = 0xFFFFFFFF
    for b in data:
        c = CRC32C_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def longest_stall(samples, every):
    """Longest time (s) a counter sampled every `every` seconds did not move."""
    longest = run = 0
    for a, b in zip(samples, samples[1:]):
        run = run + 1 if b <= a else 0
        longest = max(longest, run)
    return longest * every


def parse_snapshot_dir(name):
    """`000003-0000000041` -> (attempt 3, checkpoint 41), else None."""
    m = re.fullmatch(r"(\d+)-(\d+)", name)
    return (int(m.group(1)), int(m.group(2))) if m else None


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_text(path):
    try:
        return ANSI.sub("", path.read_text(errors="replace"))
    except OSError:
        return ""


S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET, S3_PREFIX = "chaos-access", "chaos-secret", "snapshots", "chaos"


def s3s_fs_binary():
    if os.environ.get("S3S_FS_BIN"):
        return os.environ["S3S_FS_BIN"]
    proc = subprocess.run(["bash", str(REPO / "tests/tools/install-s3s-fs.sh")], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ChaosError(f"s3s-fs is not installed: {proc.stderr[-500:]}")
    return proc.stdout.strip().splitlines()[-1]


class S3Server:
    """An s3s-fs process serving `root` (one folder per bucket); can be stopped and started again
    on the same port with the same data."""

    def __init__(self, root, logs):
        self.binary = s3s_fs_binary()
        self.root, self.logs = root, logs
        (root / S3_BUCKET).mkdir(parents=True, exist_ok=True)  # s3s-fs: a bucket is a folder
        self.port = None
        self.proc = None
        self.starts = 0

    def start(self, timeout=15.0):
        for _ in range(3 if self.port is None else 1):
            port = self.port or free_port()
            self.starts += 1
            log = open(self.logs / f"s3s-fs-{self.starts}.log", "w")
            self.proc = subprocess.Popen([self.binary, "--host", "127.0.0.1", "--port", str(port),
                                          "--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY,
                                          str(self.root)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    time.sleep(0.1)  # someone listens: make sure it is our server
                    if self.proc.poll() is None:
                        self.port = port
                        return port
                except OSError:
                    time.sleep(0.05)
            self.stop()
        raise ChaosError(f"s3s-fs did not start listening (logs in {self.logs})")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def verify_sequence(binary, output, keys, events, work):
    """`streamjob verify-sequence` over the committed output: (report, exit code); the report is
    also kept as work/verify.json."""
    proc = subprocess.run([binary, "verify-sequence", "--output", str(output), "--keys", str(keys),
                           "--events", str(events), "--json"], capture_output=True, text=True)
    (pathlib.Path(work) / "verify.json").write_text(proc.stdout)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.returncode
    except (ValueError, IndexError):
        raise ChaosError(f"verify-sequence printed no report: {proc.stderr[-500:]}")


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Run:
    """One job run (many attempts) in its own folder."""

    def __init__(self, binary, work, scenario, seed, workers, parallelism, keys, events, rate):
        self.binary, self.work, self.scenario, self.seed = binary, work, scenario, seed
        self.workers, self.parallelism, self.keys, self.events, self.rate = workers, parallelism, keys, events, rate
        self.rng = random.Random(f"{scenario}-{seed}")
        self.name = f"chaos-{scenario}"
        self.out = work / "output"
        self.snap = work / "snapshots"
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.attempt = 0
        self.injections = 0
        self.recoveries = []
        self.notes = []
        self.details = []
        self.started_procs = []
        self.s3 = None          # S3Server of the S3 scenarios
        self.s3_port = None     # the port workers send S3 requests to (the server, or the proxy)
        self.proxy = None
        self.fault_scale = 1.0  # s3-faults: multiplies the proxy's default fault rates
        self.failed_on_their_own = 0
        self.restores, self.empty_starts, self.partial_seen = 0, 0, set()
        self.manifest = work / "job.yaml"
        self.write_manifest()

    def use_s3(self, server, port):
        """Snapshots go to the bucket of `server`, reached at `port` (the server itself or a proxy)."""
        self.s3, self.s3_port = server, port
        self.snap = server.root / S3_BUCKET / S3_PREFIX / "default" / self.name
        self.write_manifest()

    def write_manifest(self, tolerable_failures=3):
        """The job every attempt runs (re-read by each attempt, so a scenario may change it between attempts)."""
        if self.s3_port:
            storage = (f"{{s3: {{bucket: {S3_BUCKET}, prefix: {S3_PREFIX}, region: us-east-1, "
                       f"endpoint: 'http://127.0.0.1:{self.s3_port}', forcePathStyle: true}}}}")
        else:
            storage = f"{{path: {self.snap}}}"
        self.manifest.write_text(f"""apiVersion: streamjob.io/v1alpha1
kind: StreamJob
metadata: {{name: {self.name}}}
spec:
  parallelism: {self.parallelism}
  workers: {self.workers}
  maxParallelism: 32
  job:
    name: sequence-check
    params: {{keys: {self.keys}, events: {self.events}, rate: {self.rate}, splits: 8, output: {self.out}}}
  checkpoint: {{interval: 200ms, timeout: 10s, minPause: 50ms, tolerableFailures: {tolerable_failures}}}
  storage: {storage}
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
            if self.s3_port:
                # What the operator renders into the pods for spec.storage.s3 (static keys, no Secret).
                env.update(S3_ENDPOINT=f"http://127.0.0.1:{self.s3_port}", AWS_REGION="us-east-1",
                           S3_FORCE_PATH_STYLE="true", AWS_ACCESS_KEY_ID=S3_ACCESS_KEY,
                           AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY, AWS_EC2_METADATA_DISABLED="true")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            self.started_procs.append(proc)
            procs.append((proc, control))
        return procs

    def kill_leftovers(self):
        """SIGKILL any worker this run started that still runs (after a failed check)."""
        for proc in self.started_procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

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
        return verify_sequence(self.binary, self.out, self.keys, self.events, self.work)

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

    # --- S3 scenarios ---------------------------------------------------------------------------

    def scan_snapshots(self):
        """Every checkpoint folder in the store, read directly from s3s-fs's data folder while no
        worker runs: {folder name: None if its manifest exists and every file it lists has the listed
        size and CRC32C, else what is wrong}."""
        found = {}
        root = self.snap / "checkpoints"
        for d in sorted(root.glob("*")) if root.is_dir() else []:
            if parse_snapshot_dir(d.name) is None or not any(f.is_file() for f in d.rglob("*")):
                continue  # s3s-fs keeps empty folders after deletes; they hold no object
            manifest_file = d / "_manifest.json"
            if not manifest_file.is_file():
                found[d.name] = "no manifest (partial)"
                continue
            try:
                manifest = json.loads(manifest_file.read_bytes())
            except ValueError:
                found[d.name] = "manifest is not JSON"
                continue
            problem = None
            if (manifest.get("attempt"), manifest.get("checkpointId")) != parse_snapshot_dir(d.name):
                problem = f"manifest names attempt {manifest.get('attempt')} checkpoint {manifest.get('checkpointId')}"
            for op in manifest.get("operators", []):
                for sub in op.get("subtasks", []):
                    for f in sub.get("files", []):
                        path = self.snap / f["key"]
                        if not path.is_file():
                            problem = problem or f"{f['key']} is missing"
                            continue
                        data = path.read_bytes()
                        if len(data) != f["size"] or crc32c(data) != f["crc32c"]:
                            problem = problem or f"{f['key']} does not match its size or checksum"
            found[d.name] = problem
        return found

    def check_restore(self, procs, before, at_least=None):
        """The attempt that just started restored a complete checkpoint (per `before`, the store as it
        was before the attempt), at least checkpoint `at_least`; the worker's log says the same."""
        for _ in range(10):
            s = status(procs[0][1])
            if s is not None:
                break
            time.sleep(0.2)
        else:
            raise ChaosError(f"attempt {self.attempt}: worker 0's status API does not answer")
        restored = s.get("restoredFrom")
        complete = sorted((parse_snapshot_dir(n)[1], parse_snapshot_dir(n)[0], n)
                          for n, problem in before.items() if problem is None)
        self.partial_seen.update(n for n, problem in before.items() if problem is not None)
        log = log_text(self.logs / f"attempt-{self.attempt}-worker-0.log")
        if restored is None:
            if complete:
                raise ChaosError(f"attempt {self.attempt} started empty although {complete[-1][2]} was complete")
            self.empty_starts += 1
            return None
        name = restored.rstrip("/").rsplit("/", 1)[-1]
        if name not in before:
            raise ChaosError(f"attempt {self.attempt} restored {name}, which was not in the store before it started")
        if before[name] is not None:
            raise ChaosError(f"attempt {self.attempt} restored {name}: {before[name]}")
        checkpoint = parse_snapshot_dir(name)[1]
        if at_least is not None and checkpoint < at_least:
            raise ChaosError(f"attempt {self.attempt} restored checkpoint {checkpoint}, older than checkpoint "
                             f"{at_least} which completed before the failure")
        said = re.search(r"restore=restoring checkpoint (\d+) of attempt (\d+)", log)
        if not said or (int(said.group(2)), int(said.group(1))) != parse_snapshot_dir(name):
            raise ChaosError(f"attempt {self.attempt}: status says it restored {name}, its log says "
                             f"{said.group(0) if said else 'nothing'}")
        if name != complete[-1][2]:
            skipped = re.search(r"restore=(.*)", log)
            self.notes.append(f"attempt {self.attempt} restored {name}, not the newest complete "
                              f"{complete[-1][2]}: {skipped.group(1)[:300] if skipped else '?'}")
        self.restores += 1
        return checkpoint

    def start_checked(self, at_least=None, timeout=60):
        """Scan the store, start an attempt, wait until it runs and check its restore. Returns
        (procs, seconds until running) or (procs, None) if the attempt ended before it ran."""
        before = self.scan_snapshots()
        procs = self.start_attempt()
        ran = self.wait_running(procs, timeout=timeout)
        if ran is not None:
            self.check_restore(procs, before, at_least)
        return procs, ran

    def last_checkpoint(self, port):
        s = status(port) or {}
        c = s.get("lastCheckpoint") or {}
        return c.get("id") if c.get("attempt") == self.attempt else None

    def wait_checkpoint(self, procs, newer_than, timeout, what):
        """Waits until worker 0 reports a checkpoint of this attempt newer than `newer_than`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cid = self.last_checkpoint(procs[0][1])
            if cid is not None and (newer_than is None or cid > newer_than):
                return cid
            if any(p.poll() is not None for p, _ in procs):
                raise ChaosError(f"attempt {self.attempt} ended while waiting for {what} (see {self.logs})")
            time.sleep(0.05)
        raise ChaosError(f"attempt {self.attempt}: no {what} within {timeout}s")

    def s3_outage(self, outage):
        port = self.s3.start()
        self.use_s3(self.s3, port)
        # Phase 1: tolerableFailures far above what the outage causes (one failure per checkpoint
        # interval at most): the attempt must ride out the outage.
        self.write_manifest(tolerable_failures=100000)
        procs, ran = self.start_checked()
        if ran is None:
            raise ChaosError(f"attempt {self.attempt} ended before it ran (see {self.logs})")
        self.wait_checkpoint(procs, None, 15, "first checkpoint")
        time.sleep(self.rng.uniform(0.5, 1.5))
        port0 = procs[0][1]
        before = metrics(port0) or {}
        records_before = (status(port0) or {}).get("sourceRecords", 0)
        self.s3.stop()
        self.injections += 1
        down = time.monotonic()
        settled = None  # the newest checkpoint once checkpoints in flight at the stop had their chance
        samples = []
        while time.monotonic() - down < outage:
            time.sleep(0.5)
            s = status(port0)
            dead = [i for i, (p, _) in enumerate(procs) if p.poll() is not None]
            if dead or not s or s.get("state") != "running":
                raise ChaosError(f"attempt {self.attempt} failed during the S3 outage although tolerableFailures "
                                 f"covers it (workers exited: {dead}; failure: {(s or {}).get('failure')}; "
                                 f"see {self.logs})")
            cid = self.last_checkpoint(port0)
            if time.monotonic() - down >= 2.0:
                if settled is None:
                    settled = cid
                elif cid != settled:
                    raise ChaosError(f"checkpoint {cid} completed while S3 was down")
            samples.append(s.get("sourceRecords", 0))
        during = metrics(port0) or {}
        failed = during.get("streamjob_checkpoints_failed_total", 0) - before.get("streamjob_checkpoints_failed_total", 0)
        completed = during.get("streamjob_checkpoints_completed_total", 0) - before.get("streamjob_checkpoints_completed_total", 0)
        read = samples[-1] - records_before
        stall = longest_stall(samples, 0.5)
        if stall >= 5.0:
            raise ChaosError(f"the sources of worker 0 stood still for {stall:.1f}s during the S3 outage")
        if failed < 1:
            raise ChaosError(f"no checkpoint failed during a {outage}s S3 outage (metrics: {during})")
        if read < self.rate * outage * 0.2 / self.workers:
            raise ChaosError(f"the sources of worker 0 read only {read} records during the {outage}s outage")
        self.s3.start()
        back = time.monotonic()
        newer = self.wait_checkpoint(procs, settled, 30, "checkpoint after S3 came back")
        resumed = time.monotonic() - back
        log = log_text(self.logs / f"attempt-{self.attempt}-worker-0.log")
        aborted = {int(m) for m in re.findall(r"checkpoint aborted checkpoint_id=(\d+)", log)}
        if len(aborted) < failed:
            raise ChaosError(f"/metrics counts {int(failed)} failed checkpoints, the log aborted only {len(aborted)}")
        self.details.append(f"outage {outage}s with tolerableFailures 100000: attempt kept running, worker 0's "
                            f"sources read {read} records (longest stall {stall:.1f}s), {int(failed)} "
                            f"checkpoints failed (/metrics) and were aborted (log), "
                            f"{int(completed)} completed (in flight at the stop), the newest stayed {settled}; "
                            f"checkpoint {newer} completed {resumed:.1f}s after S3 was back")
        # A kill after the outage: the next attempt restores from S3 a checkpoint that completed.
        time.sleep(self.rng.uniform(0.3, 1.0))
        last = self.last_checkpoint(port0)
        victim = self.rng.randrange(len(procs))
        procs[victim][0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        self.injections += 1
        self.wait_exit(procs, 30, f"after worker {victim} was killed")
        self.write_manifest(tolerable_failures=3)
        procs, ran = self.start_checked(at_least=last)
        if ran is None:
            raise ChaosError(f"attempt {self.attempt} ended before it ran (see {self.logs})")
        self.recoveries.append(time.monotonic() - killed)
        restored = parse_snapshot_dir((status(procs[0][1]) or {})["restoredFrom"].rsplit("/", 1)[-1])[1]
        if restored in aborted:
            raise ChaosError(f"attempt {self.attempt} restored checkpoint {restored}, which was aborted")

        # Phase 2 (this attempt): the default budget (tolerableFailures 3) and a shorter outage: the
        # engine fails the attempt; this script restarts attempts like the operator until one runs.
        last = self.wait_checkpoint(procs, None, 15, "first checkpoint")
        time.sleep(self.rng.uniform(0.3, 1.0))
        last = self.last_checkpoint(procs[0][1]) or last
        short = max(5.0, outage / 3)  # S3 stays down this long after the attempt failed
        self.s3.stop()
        self.injections += 1
        down = time.monotonic()
        codes = self.wait_exit(procs, 60, "during the second outage (tolerableFailures 3)")
        failed_after = time.monotonic() - down
        log = log_text(self.logs / f"attempt-{self.attempt}-worker-0.log")
        if not all(codes) or "checkpoints failed in a row" not in log:
            raise ChaosError(f"attempt {self.attempt} did not fail for its checkpoint failures (exit codes {codes})")
        refused, refused_seconds = 0, []
        while time.monotonic() - down < failed_after + short:
            time.sleep(1.0)  # the operator's restart backoff
            t0 = time.monotonic()
            procs = self.start_attempt()
            if self.wait_running(procs, timeout=60) is not None:
                raise ChaosError(f"attempt {self.attempt} ran while S3 was down")
            codes = self.wait_exit(procs, 60, "while S3 was down")
            if not all(codes):
                raise ChaosError(f"attempt {self.attempt} exited 0 while S3 was down")
            refused += 1
            refused_seconds.append(time.monotonic() - t0)
        self.s3.start()
        back = time.monotonic()
        while True:
            procs, ran = self.start_checked(at_least=last)
            if ran is not None:
                break
            self.wait_exit(procs, 60, "right after S3 came back")
            if time.monotonic() - back > 60:
                raise ChaosError("no attempt ran within 60s after S3 came back")
            time.sleep(1.0)
        self.recoveries.append(time.monotonic() - back)
        self.details.append(f"outage {failed_after + short:.0f}s with tolerableFailures 3: the attempt failed "
                            f"{failed_after:.1f}s into it; {refused} attempts started during it exited non-zero "
                            f"(each after {fmt_s(percentile(refused_seconds, 0.5))} median); the next one ran "
                            f"{self.recoveries[-1]:.1f}s after S3 was back")
        procs[0][0].send_signal(signal.SIGKILL)
        self.wait_exit(procs, 30, "after the outage check")
        self.pending_since_kill = 0.0
        self.finish_checked(tries=1)

    def s3_faults(self, kills):
        port = self.s3.start()
        rates = {kind: rate * self.fault_scale for kind, rate in DEFAULT_RATES.items()}
        self.proxy = FaultProxy(port, self.seed, rates, trace=self.logs / "s3-proxy.log").start()
        self.use_s3(self.s3, self.proxy.port)
        last = None
        killed = None
        done = 0
        while done < kills:
            if self.attempt > 4 * kills + 10:
                raise ChaosError(f"{self.attempt} attempts for {kills} kills: attempts keep failing (see {self.logs})")
            procs, ran = self.start_checked(at_least=last)
            if ran is None:
                self.wait_exit(procs, 60, "after a failed start")
                self.failed_on_their_own += 1
                time.sleep(1.0)  # the operator's restart backoff
                continue
            if killed is not None:
                self.recoveries.append(time.monotonic() - killed)
                killed = None
            time.sleep(self.rng.uniform(1.0, 3.0))
            if any(p.poll() is not None for p, _ in procs):
                self.wait_exit(procs, 60, "after an attempt failed")
                self.failed_on_their_own += 1
                last = None
                continue
            last = self.last_checkpoint(procs[0][1])
            victim = self.rng.randrange(len(procs))
            procs[victim][0].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            self.injections += 1
            done += 1
            self.wait_exit(procs, 60, f"after worker {victim} was killed")
        self.pending_since_kill = time.monotonic() - killed if killed else 0.0
        self.finish_checked(at_least=last)
        faults = self.proxy.faults()
        self.details.append(f"{self.proxy.counts['requests']} S3 requests, faults injected: "
                            + ", ".join(f"{k} {faults.get(k, 0)}" for k in self.proxy.rates)
                            + f"; attempts that failed on their own: {self.failed_on_their_own}")

    def finish_checked(self, at_least=None, tries=10):
        """Like finish(), through S3 faults: restarts (like the operator) until an attempt completes."""
        t0 = time.monotonic()
        for _ in range(tries):
            procs, ran = self.start_checked(at_least=at_least)
            if ran is not None and self.pending_since_kill:
                self.recoveries.append(time.monotonic() - t0 + self.pending_since_kill)
                self.pending_since_kill = 0.0
            codes = self.wait_exit(procs, 300, "final attempt")
            if not any(codes):
                return
            self.failed_on_their_own += 1
            at_least = None
            time.sleep(1.0)
        raise ChaosError(f"{tries} final attempts failed (see {self.logs})")


def run_one(binary, scenario, seed, kills, workers, keep_root, outage=30, keep=False, fault_scale=1.0):
    work = pathlib.Path(tempfile.mkdtemp(prefix=f"chaos-{scenario}-{seed}-", dir=keep_root))
    # Enough records that the run outlasts its injections at this rate.
    rate = 20000
    rounds = {"kill": kills, "zombie": max(1, kills // 10), "corrupt": max(1, kills // 10),
              "s3-outage": outage, "s3-faults": max(3, kills // 5)}[scenario]
    events = {"s3-outage": rate * (outage + 30), "s3-faults": rate * (10 + 3 * rounds)}.get(
        scenario, rate * (2 + rounds) * 2)
    run = Run(binary, work, scenario, seed, workers if scenario != "zombie" else 1,
              4, 50, events, rate)
    run.pending_since_kill = 0.0
    run.fault_scale = fault_scale
    row = {"scenario": scenario, "seed": seed, "folder": str(work)}
    started = time.monotonic()
    try:
        if scenario.startswith("s3-"):
            run.s3 = S3Server(work / "s3", run.logs)
            getattr(run, scenario.replace("-", "_"))(rounds)  # runs the job to its end too
        else:
            getattr(run, scenario)(rounds)
            run.finish()
        report, code = run.verify()
        row.update(report)
        row["ok"] = code == 0 and report.get("lost") == 0 and report.get("duplicated") == 0
        # Killed workers leave in-progress files; later attempts delete them once their first
        # checkpoint completes. A zombie (an older attempt still running) can write new ones after
        # that, so only the scenarios without zombies must end with none.
        left = sorted(f.name for f in run.out.glob(".inprogress-*")) if run.out.is_dir() else []
        row["in_progress_left"] = len(left)
        if left and scenario in ("kill", "corrupt"):
            row["ok"] = False
            row["error"] = (f"{len(left)} in-progress files of earlier attempts left in the output folder: "
                            f"{', '.join(left[:5])}")
        elif left:
            run.details.append(f"in-progress files left by the zombie attempt: {len(left)}")
    except ChaosError as e:
        row["ok"] = False
        row["error"] = str(e)
    finally:
        run.kill_leftovers()
        if run.proxy:
            run.proxy.close()
        if run.s3:
            run.s3.stop()
    if run.s3:
        run.details.append(f"restores checked against the store: {run.restores} (plus {run.empty_starts} "
                           f"starts with empty state, no complete checkpoint yet); partial checkpoint folders "
                           f"present at a restore and passed over: {len(run.partial_seen)}")
    row.update(injections=run.injections, attempts=run.attempt, recoveries=len(run.recoveries),
               recovery_p50=percentile(run.recoveries, 0.5), recovery_p99=percentile(run.recoveries, 0.99),
               seconds=time.monotonic() - started, notes=run.notes, details=run.details)
    if row["ok"] and not keep:
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
    ap.add_argument("--kills", type=int, default=25, help="worker kills per kill run (default 25; s3-faults kills kills/5 times, at least 3)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes per attempt (default 2)")
    ap.add_argument("--scenarios", default="kill,zombie,corrupt",
                    help="comma-separated: kill, zombie, corrupt, s3-outage, s3-faults (default kill,zombie,corrupt)")
    ap.add_argument("--outage", type=int, default=30, help="seconds S3 is down in s3-outage (default 30)")
    ap.add_argument("--bin", help="streamjob binary (default: target/debug/streamjob)")
    ap.add_argument("--keep-dir", help="where run folders go (default: the system temp folder)")
    ap.add_argument("--fault-scale", type=float, default=1.0,
                    help="s3-faults: multiply the proxy's fault rates (0 = a faithful proxy; default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the run folders of passing runs too")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    args = ap.parse_args()
    binary = find_binary(args.bin)
    seeds = [args.seed] if args.seed is not None else parse_seeds(args.seeds)
    rows = []
    for seed in seeds:
        for scenario in args.scenarios.split(","):
            row = run_one(binary, scenario, seed, args.kills, args.workers, args.keep_dir, args.outage, args.keep,
                          args.fault_scale)
            verdict = "ok" if row["ok"] else "FAILED"
            print(f"[chaos] {scenario} seed {seed}: {verdict} ({row['injections']} injections, "
                  f"{row.get('committed', '?')} records, lost {row.get('lost', '?')}, duplicated "
                  f"{row.get('duplicated', '?')}, {row['seconds']:.0f}s)"
                  + (f"; {row['error']}" if "error" in row else "")
                  + ("" if row["ok"] and not args.keep else f"; logs kept in {row['folder']}"), flush=True)
            rows.append(row)
    print()
    print("| scenario | seed | injections | records expected | committed | lost | duplicated | out of order | recoveries | recovery p50 | recovery p99 | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scenario']} | {r['seed']} | {r['injections']} | {r.get('expected', '-')} | {r.get('committed', '-')} "
              f"| {r.get('lost', '-')} | {r.get('duplicated', '-')} | {r.get('out_of_order', '-')} | {r['recoveries']} "
              f"| {fmt_s(r['recovery_p50'])} | {fmt_s(r['recovery_p99'])} | {'ok' if r['ok'] else 'FAILED'} |")
    for r in rows:
        for line in r.get("details", []) + r.get("notes", []):
            print(f"{r['scenario']} seed {r['seed']}: {line}")
    kills = sum(r["injections"] for r in rows if r["scenario"] == "kill")
    print(f"\nworker kills in total: {kills}; recovery = kill until the next attempt's worker 0 runs "
          f"(restore done), including this script's restart delay (none) and process start")
    if any(r["scenario"].startswith("s3-") for r in rows):
        print("s3-outage: injections = 2 outages + 1 kill; recoveries = the kill (as above) and the second "
              "outage (S3 back until an attempt runs); s3-faults: recoveries = kill until the next attempt "
              "runs, restore read through the proxy (delays and retries included)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
