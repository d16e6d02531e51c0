#!/usr/bin/env python3
"""Seedable chaos under the operator, on the local cluster (real kube-apiserver, etcd, process
kubelet running worker pods as host processes, s3s-fs for snapshots).

A `sequence-check` StreamJob (per-key consecutive sequence numbers -> running count per key ->
exactly-once file sink, snapshots in S3, several worker pods) runs under a `streamjob operator`
process that this script SIGKILLs at random points, many times per run:
  idle       while the job just runs and checkpoints
  restore    right after a worker pod's processes were SIGKILLed (the operator dies while it
             notices the failure, picks the checkpoint, creates the next attempt)
  upgrade    right after a spec change that rescales through a savepoint (parallelism 2 <-> 3):
             the operator dies in the middle of stop-with-savepoint / recreate / restore
  savepoint  right after an on-demand savepoint was requested (savepointTriggerNonce)
The operator comes back after a random pause (the same identity, like a restarted container) and
must finish whatever it was doing. At the end the source is sped up (one more upgrade), the job
runs to its end, and `streamjob verify-sequence` judges the committed output from the data alone:
lost, duplicated, out of order. Every round also waits until the job runs again (the right
parallelism, no pending change), so a stuck reconcile fails the run.

Usage:
  tests/chaos/operator_chaos.py [--seed N] [--operator-kills K] [--bin PATH]
  tests/chaos/operator_chaos.py --seed 1 --operator-kills 12     (what CI runs)
  tests/chaos/operator_chaos.py --seeds 1-10 --operator-kills 30 (a longer soak)

The cluster must be up (tests/cluster/up.sh); its settings come from target/cluster/env. Prints the
same summary table as chaos.py and exits non-zero if anything was lost or duplicated, or the
operator failed to bring the job back. A failing run keeps its folder (operator log, verifier
report; pod logs stay in the cluster's log folder under the run's namespace) and prints its path.
"""

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
from chaos import ChaosError, find_binary, fmt_s, parse_seeds, percentile, verify_sequence  # noqa: E402
from cluster import load_cluster_env, s3_request  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
JOB = "seq"


class Kube:
    """kubectl in the run's namespace."""

    def __init__(self, env, namespace):
        self.env = dict(os.environ, KUBECONFIG=env["KUBECONFIG"])
        self.namespace = namespace

    def run(self, *args, stdin=None, check=True):
        p = subprocess.run(["kubectl", "-n", self.namespace, *args], input=stdin, capture_output=True,
                           text=True, env=self.env, timeout=60)
        if check and p.returncode != 0:
            raise ChaosError(f"kubectl {' '.join(args)}: {p.stderr.strip()}")
        return p

    def json(self, *args):
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(self, obj):
        self.run("apply", "--server-side", "--field-manager=chaos", "-f", "-", stdin=json.dumps(obj))

    def patch_spec(self, spec):
        self.run("patch", "streamjob", JOB, "--type", "merge", "-p", json.dumps({"spec": spec}))


class Operator:
    """One `streamjob operator` process at a time; the same identity across restarts."""

    def __init__(self, binary, env, namespace, log):
        self.binary, self.env, self.namespace, self.log = binary, env, namespace, log
        self.proc = None

    def start(self):
        log = open(self.log, "a")
        self.proc = subprocess.Popen(
            [self.binary, "operator", "--namespace", self.namespace, "--http-addr", "127.0.0.1:0"],
            stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, KUBECONFIG=self.env["KUBECONFIG"], STREAMJOB_LOG="info,kube=warn",
                     HOSTNAME="operator-chaos"))

    def kill(self):
        if self.proc.poll() is not None:
            raise ChaosError(f"the operator had exited by itself (code {self.proc.returncode}); see {self.log}")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)


class Run:
    def __init__(self, binary, env, seed, kills, work):
        self.binary, self.env, self.seed, self.kills, self.work = binary, env, seed, kills, work
        self.rng = random.Random(f"operator-{seed}")
        self.namespace = f"chaos-op-{seed}-{os.getpid() % 100000}"
        self.kube = Kube(env, self.namespace)
        self.operator = Operator(binary, env, self.namespace, work / "operator.log")
        self.out = work / "output"
        self.out.mkdir(parents=True, exist_ok=True)
        self.keys, self.events, self.rate = 50, 2_000_000, 4000
        self.parallelism = 2
        self.operator_kills = 0
        self.worker_kills = 0
        self.by_point = {}
        self.recoveries = []
        self.corrupted = []
        self.notes = []

    # --- setup -------------------------------------------------------------------------------

    def setup(self):
        self.kube.run("create", "namespace", self.namespace, "-o", "name")
        self.kube.run("label", "namespace", self.namespace, "streamjob.io/test=true")
        deadline = time.monotonic() + 60
        # Pods are refused until the controller-manager gave the default service account its token.
        while True:
            p = self.kube.run("get", "serviceaccount", "default", "-o", "json", check=False)
            if p.returncode == 0 and json.loads(p.stdout).get("secrets"):
                break
            if time.monotonic() > deadline:
                raise ChaosError("the namespace's default service account got no token within 60s")
            time.sleep(0.3)
        status, body = s3_request("PUT", f"/{self.namespace}")
        if status != 200:
            raise ChaosError(f"create bucket {self.namespace}: HTTP {status} {body[:300]!r}")
        self.kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials"},
                         "stringData": {"AWS_ACCESS_KEY_ID": self.env["AWS_ACCESS_KEY_ID"],
                                        "AWS_SECRET_ACCESS_KEY": self.env["AWS_SECRET_ACCESS_KEY"]}})
        self.kube.apply({
            "apiVersion": "streamjob.io/v1alpha1", "kind": "StreamJob", "metadata": {"name": JOB},
            "spec": {
                "image": "streamjob/streamjob:dev",
                "parallelism": self.parallelism, "workers": 2, "maxParallelism": 32,
                "job": {"name": "sequence-check", "params": {
                    "keys": self.keys, "events": self.events, "rate": self.rate, "splits": 8,
                    "output": str(self.out)}},
                "checkpoint": {"interval": "300ms", "timeout": "20s", "minPause": "100ms"},
                "restartPolicy": {"maxRestarts": 1000, "backoff": {"initial": "100ms", "max": "1s"}},
                "storage": {"s3": {"bucket": self.namespace, "endpoint": self.env["S3_ENDPOINT"],
                                   "forcePathStyle": True, "credentialsSecret": {"name": "s3-credentials"}}},
            }})

    def teardown(self):
        self.operator.stop()
        self.kube.run("delete", "streamjob", JOB, "--wait=false", check=False)
        for _ in range(50):  # without an operator the finalizer stays: remove it so the namespace goes
            p = self.kube.run("patch", "streamjob", JOB, "--type", "merge", "-p",
                              '{"metadata":{"finalizers":null}}', check=False)
            if p.returncode != 0:
                break
            time.sleep(0.2)
        subprocess.run(["kubectl", "delete", "namespace", self.namespace, "--wait=false"],
                       env=self.kube.env, capture_output=True)

    # --- observation -------------------------------------------------------------------------

    def job(self):
        return self.kube.json("get", "streamjob", JOB)

    def wait(self, what, pred, timeout=120.0):
        deadline = time.monotonic() + timeout
        while True:
            if not self.operator.alive() and self.operator.proc is not None:
                raise ChaosError(f"the operator exited by itself while waiting for {what}; see {self.operator.log}")
            job = self.job()
            if pred(job):
                return job
            if time.monotonic() > deadline:
                raise ChaosError(f"{what}: not reached after {timeout:.0f}s; status: "
                                 f"{json.dumps(job.get('status', {}))[:800]}")
            time.sleep(0.1)

    @staticmethod
    def status(job):
        return job.get("status") or {}

    def running(self, job, min_attempt=1):
        s = self.status(job)
        return (s.get("phase") == "Running" and (s.get("jobAttempt") or 0) >= min_attempt
                and s.get("parallelism") == self.parallelism and not s.get("pendingChange"))

    def attempt(self):
        return self.status(self.job()).get("jobAttempt") or 0

    def worker_pgids(self):
        pods = self.kube.json("get", "pods", "-l", f"streamjob.io/job={JOB}")["items"]
        pgids = []
        for pod in pods:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                cid = cs.get("containerID") or ""
                if cid.startswith("process://") and "running" in (cs.get("state") or {}):
                    pgids.append(int(cid.removeprefix("process://")))
        return pgids

    # --- injections --------------------------------------------------------------------------

    def kill_operator(self, point, delay):
        time.sleep(delay)
        self.operator.kill()
        self.operator_kills += 1
        self.by_point[point] = self.by_point.get(point, 0) + 1
        time.sleep(self.rng.uniform(0.1, 2.0))
        self.operator.start()

    def round(self, point):
        before = self.attempt()
        if point == "idle":
            self.kill_operator(point, self.rng.uniform(0.2, 3.0))
            self.wait("running after an idle operator kill", lambda j: self.running(j, before))
        elif point == "restore":
            pgids = self.worker_pgids()
            if not pgids:
                self.notes.append("no running worker pod to kill")
                return
            victim = self.rng.choice(pgids)
            killed_at = time.monotonic()
            try:
                os.killpg(victim, signal.SIGKILL)
                self.worker_kills += 1
            except ProcessLookupError:
                self.notes.append("the worker to kill was gone already")
            self.kill_operator(point, self.rng.uniform(0.0, 1.5))
            self.wait("a new attempt running after a worker kill", lambda j: self.running(j, before + 1))
            self.recoveries.append(time.monotonic() - killed_at)
        elif point == "upgrade":
            self.parallelism = 3 if self.parallelism == 2 else 2
            self.kube.patch_spec({"parallelism": self.parallelism})
            self.kill_operator(point, self.rng.uniform(0.0, 2.5))
            self.wait(f"running at parallelism {self.parallelism} after the upgrade",
                      lambda j: self.running(j, before + 1))
        elif point == "corrupt":
            # The operator is down while every worker dies and the newest checkpoint gets a flipped
            # byte; the operator comes back and must restore an older snapshot and say so.
            self.operator.kill()
            self.operator_kills += 1
            self.by_point[point] = self.by_point.get(point, 0) + 1
            for pgid in self.worker_pgids():
                try:
                    os.killpg(pgid, signal.SIGKILL)
                    self.worker_kills += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
            victim_dir = self.corrupt_newest_checkpoint()
            self.operator.start()
            job = self.wait("a new attempt running after a corrupted checkpoint",
                            lambda j: self.running(j, before + 1))
            restored = self.status(job).get("restoredFrom") or ""
            if victim_dir in restored:
                raise ChaosError(f"attempt {self.attempt()} restored the corrupted checkpoint {victim_dir}")
            self.corrupted.append(victim_dir)
            # ... and the user is told: a Warning event names the skipped snapshot and why.
            deadline = time.monotonic() + 30
            while not any(e.get("type") == "Warning" and e.get("reason") == "SnapshotsSkipped"
                          and victim_dir in (e.get("message") or e.get("note") or "")
                          for e in self.kube.json("get", "events")["items"]):
                if time.monotonic() > deadline:
                    raise ChaosError(f"no SnapshotsSkipped warning event names the corrupted {victim_dir}")
                time.sleep(0.5)
        elif point == "savepoint":
            have = {s.get("location") for s in self.status(self.job()).get("savepoints") or []}
            self.kube.patch_spec({"savepointTriggerNonce": self.rng.randrange(1, 1 << 30)})
            self.kill_operator(point, self.rng.uniform(0.0, 1.5))
            self.wait("the requested savepoint recorded", lambda j: self.running(j, before) and any(
                s.get("location") not in have for s in self.status(j).get("savepoints") or []))
        # Let the job checkpoint again before the next injection.
        time.sleep(self.rng.uniform(0.3, 1.0))

    def corrupt_newest_checkpoint(self):
        """Flip one byte of a state file of the newest complete checkpoint on the S3 server's disk."""
        # s3://<bucket>/<namespace>/<job>/ is the job's root; s3s-fs keeps objects as files.
        root = (pathlib.Path(self.env["STREAMJOB_CLUSTER_DIR"]) / "s3" / self.namespace / self.namespace
                / JOB / "checkpoints")
        dirs = sorted(d for d in root.glob("*") if (d / "_manifest.json").is_file())
        for d in reversed(dirs):
            files = sorted(f for f in d.rglob("*.state") if f.stat().st_size > 0)
            if files:
                victim = self.rng.choice(files)
                data = bytearray(victim.read_bytes())
                data[self.rng.randrange(len(data))] ^= 0xFF
                victim.write_bytes(bytes(data))
                return d.name
        raise ChaosError(f"no complete checkpoint with state files under {root} to corrupt")

    def play(self):
        self.operator.start()
        self.wait("the first attempt running", lambda j: self.running(j, 1))
        points = ["idle", "restore", "upgrade", "savepoint", "corrupt"]
        # Every kind at least twice, the rest at random; the order from the seed.
        plan = (points * 2 + [self.rng.choice(points) for _ in range(max(0, self.kills - 10))])[: self.kills]
        self.rng.shuffle(plan)
        for i, point in enumerate(plan):
            t0 = time.monotonic()
            self.round(point)
            print(f"[chaos] operator seed {self.seed}: round {i + 1}/{len(plan)} {point}: "
                  f"{time.monotonic() - t0:.1f}s, attempt {self.attempt()}", file=sys.stderr, flush=True)
        # Finish: the source at full speed (one more rescale through a savepoint), then to the end.
        before = self.attempt()
        self.kube.patch_spec({"job": {"params": {"rate": 0}}})
        self.wait("running with the fast source", lambda j: (self.status(j).get("jobAttempt") or 0) > before
                  or self.status(j).get("phase") == "Finished")
        self.wait("the job finished", lambda j: self.status(j).get("phase") == "Finished", timeout=300)

    def verify(self):
        return verify_sequence(self.binary, self.out, self.keys, self.events, self.work)


def run_one(binary, env, seed, kills, keep_root):
    work = pathlib.Path(tempfile.mkdtemp(prefix=f"chaos-operator-{seed}-", dir=keep_root))
    run = Run(binary, env, seed, kills, work)
    row = {"scenario": "operator", "seed": seed, "folder": str(work)}
    started = time.monotonic()
    try:
        run.setup()
        run.play()
        report, code = run.verify()
        row.update(report)
        row["ok"] = code == 0 and report.get("lost") == 0 and report.get("duplicated") == 0
        restarts = run.status(run.job()).get("restarts")
        run.notes.append(f"status.restarts {restarts}")
    except ChaosError as e:
        row["ok"] = False
        row["error"] = str(e)
    finally:
        run.teardown()
    row.update(injections=run.operator_kills + run.worker_kills, operator_kills=run.operator_kills,
               worker_kills=run.worker_kills, by_point=run.by_point, recoveries=len(run.recoveries),
               recovery_p50=percentile(run.recoveries, 0.5), recovery_p99=percentile(run.recoveries, 0.99),
               seconds=time.monotonic() - started, notes=run.notes, namespace=run.namespace)
    if row["ok"]:
        shutil.rmtree(work, ignore_errors=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, help="one seed (same as --seeds N)")
    ap.add_argument("--seeds", default="1", help="seeds: 1,2,5 or 1-10 (default 1)")
    ap.add_argument("--operator-kills", type=int, default=12, help="operator kills per run (default 12)")
    ap.add_argument("--bin", help="streamjob binary (default: the cluster's STREAMJOB_BIN, else target/debug)")
    ap.add_argument("--keep-dir", help="where run folders go (default: the system temp folder)")
    args = ap.parse_args()
    # A timeout's SIGTERM still runs the teardown (operator stopped, namespace deleted).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = load_cluster_env()
    binary = find_binary(args.bin or env.get("STREAMJOB_BIN"))
    seeds = [args.seed] if args.seed is not None else parse_seeds(args.seeds)
    rows = []
    for seed in seeds:
        row = run_one(binary, env, seed, args.operator_kills, args.keep_dir)
        verdict = "ok" if row["ok"] else "FAILED"
        points = ", ".join(f"{k} {v}" for k, v in sorted(row["by_point"].items()))
        print(f"[chaos] operator seed {seed}: {verdict} ({row['operator_kills']} operator kills: {points}; "
              f"{row['worker_kills']} worker kills; {row.get('committed', '?')} records, lost "
              f"{row.get('lost', '?')}, duplicated {row.get('duplicated', '?')}, {row['seconds']:.0f}s)"
              + (f"; {row['error']}" if "error" in row else "")
              + ("" if row["ok"] else f"; logs kept in {row['folder']} (pods: namespace {row['namespace']})"),
              flush=True)
        rows.append(row)
    print()
    print("| scenario | seed | injections | records expected | committed | lost | duplicated | out of order | recoveries | recovery p50 | recovery p99 | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| operator kills ({r['operator_kills']}) + worker kills ({r['worker_kills']}) | {r['seed']} "
              f"| {r['injections']} | {r.get('expected', '-')} | {r.get('committed', '-')} | {r.get('lost', '-')} "
              f"| {r.get('duplicated', '-')} | {r.get('out_of_order', '-')} | {r['recoveries']} "
              f"| {fmt_s(r['recovery_p50'])} | {fmt_s(r['recovery_p99'])} | {'ok' if r['ok'] else 'FAILED'} |")
    total = sum(r["operator_kills"] for r in rows)
    print(f"\noperator kills in total: {total}; recovery = worker kill until the operator (itself killed "
          f"0-1.5 s later and restarted 0.1-2 s after that) has the next attempt running")
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
