#!/usr/bin/env python3
"""Hostile StreamJob manifests against the local cluster: each one is rejected by the API server or
reported in status, creates no pod, and leaves a healthy job running beside them untouched.

What it does, in its own namespace (deleted at the end, with the bucket):
  1. creates the S3 credentials Secret and a bucket (signed CreateBucket, like TestCluster::new),
  2. starts `streamjob operator --namespace NS` (log in target/cluster/logs/<ns>_operator-hostile.log),
  3. starts a healthy windowed-count job (and one more that a case spoils) and waits until they run,
  4. applies every case below (`kubectl apply --server-side`, JSON manifests, `--validate=false` so
     that the API server judges, not kubectl) and records what happened:
       rejected by API server  kubectl exits non-zero and the message names the field,
       rejected by kubectl     kubectl's client-side schema check (unknown fields, --validate=strict;
                               the v1.20 API server has no field validation and prunes them),
       reported in status      Ready=False reason InvalidSpec, a message naming the field, a Warning
                               event, no pod after a short wait,
       reported, pod kept      the same for a bad spec applied to a running job, whose pod and
                               attempt stay as they were,
       failure in status       what only S3 can tell (no bucket, wrong keys): the storage failure in
                               status and a Warning event, no pod, no hot loop,
  5. restarts the operator (it must read every object again) and starts one more valid job, which
     must run; checks the healthy job: same pod, same attempt, still Running, newer checkpoints;
     the operator never exited on its own or panicked.

Prints a table and exits non-zero if any case is WRONG.

Usage:
  set -a; . target/cluster/env; set +a
  python3 tests/chaos/hostile_manifests.py [--bin PATH] [--only NAME,NAME] [--keep]
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
FIELD_MANAGER = "hostile-manifests"
LABEL_JOB = "streamjob.io/job"
SECRET = "s3-credentials"


class SweepError(Exception):
    """The sweep itself could not run (cluster, operator or healthy job)."""


# ---- environment ------------------------------------------------------------------------------

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
from chaos import find_binary  # noqa: E402
from cluster import load_cluster_env, s3_request  # noqa: E402


def kubectl(*args, body=None, timeout=60):
    data = json.dumps(body) if body is not None else None
    return subprocess.run(["kubectl", *args], input=data, capture_output=True, text=True, timeout=timeout)


def kubectl_json(*args):
    r = kubectl(*args, "-o", "json")
    if r.returncode != 0:
        raise SweepError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
    return json.loads(r.stdout)


# ---- the sweep's namespace ---------------------------------------------------------------------

class Sweep:
    def __init__(self, binary):
        self.binary = binary
        self.ns = f"hostile-{random.getrandbits(24):06x}"
        self.bucket = self.ns
        self.cluster_dir = pathlib.Path(os.environ.get("STREAMJOB_CLUSTER_DIR", REPO / "target/cluster"))
        self.output = self.cluster_dir / "out" / self.ns / "output"
        self.operator = None
        self.operator_exits = []
        self.operator_log = self.cluster_dir / "logs" / f"{self.ns}_operator-hostile.log"

    # setup

    def create_namespace(self):
        r = kubectl("create", "-f", "-", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": self.ns, "labels": {"streamjob.io/test": "true"}}})
        if r.returncode != 0:
            raise SweepError(f"create namespace: {r.stderr.strip()}")
        # Pods are refused until the controller-manager gave the default service account its token.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = kubectl("get", "serviceaccount", "default", "-n", self.ns, "-o", "json")
            if r.returncode == 0 and json.loads(r.stdout).get("secrets"):
                return
            time.sleep(0.2)
        raise SweepError("the default service account got no token within 60s")

    def create_secret(self, name, data):
        r = kubectl("apply", "-n", self.ns, "-f", "-", body={
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data})
        if r.returncode != 0:
            raise SweepError(f"create Secret {name}: {r.stderr.strip()}")

    def create_bucket(self):
        status, body = s3_request("PUT", f"/{self.bucket}")
        if status != 200:
            raise SweepError(f"create bucket {self.bucket}: HTTP {status} {body[:300]!r}")

    def start_operator(self):
        self.operator_log.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.operator_log, "ab")
        env = dict(os.environ, HOSTNAME="operator-hostile", STREAMJOB_LOG="info,kube=warn", NO_COLOR="1")
        self.operator = subprocess.Popen(
            [self.binary, "operator", "--namespace", self.ns, "--http-addr", "127.0.0.1:0"],
            stdout=log, stderr=subprocess.STDOUT, env=env)

    def restart_operator(self):
        """Stop the operator gracefully (SIGTERM) and start a new one."""
        if not self.operator_alive():
            self.operator_exits.append(self.operator.returncode)
        else:
            self.operator.terminate()
            try:
                self.operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait()
                self.operator_exits.append("did not stop within 20s of SIGTERM")
        self.start_operator()

    def operator_alive(self):
        return self.operator is not None and self.operator.poll() is None

    # manifests

    def manifest(self, name, rate=200):
        """A valid windowed-count job with snapshots in the sweep's bucket (like job_manifest)."""
        return {
            "apiVersion": "streamjob.io/v1alpha1",
            "kind": "StreamJob",
            "metadata": {"name": name},
            "spec": {
                "image": "streamjob/streamjob:dev",
                "parallelism": 2,
                "job": {"name": "windowed-count", "params": {
                    "events": 0, "rate": rate, "window": "2s", "output": str(self.output / name[:60])}},
                "checkpoint": {"interval": "2s", "timeout": "30s", "minPause": "500ms"},
                "restartPolicy": {"maxRestarts": 2, "backoff": {"initial": "1s", "max": "4s"}},
                "savepoint": {"onDelete": "none"},
                "podTemplate": {"spec": {"terminationGracePeriodSeconds": 3}},
                "storage": {"s3": {
                    "bucket": self.bucket,
                    "endpoint": os.environ["S3_ENDPOINT"],
                    "forcePathStyle": True,
                    "credentialsSecret": {"name": SECRET}}},
            },
        }

    def apply(self, manifest, *flags):
        return kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-n", self.ns,
                       *flags, "-f", "-", body=manifest)

    # observation

    def jobs(self):
        return {j["metadata"]["name"]: j for j in kubectl_json("get", "streamjobs", "-n", self.ns)["items"]}

    def pods(self):
        return kubectl_json("get", "pods", "-n", self.ns)["items"]

    def pods_of(self, job, pods=None):
        pods = self.pods() if pods is None else pods
        return [p for p in pods
                if (p["metadata"].get("labels") or {}).get(LABEL_JOB) == job
                or any(o.get("name") == job for o in p["metadata"].get("ownerReferences") or [])]

    def warning_events(self):
        out = {}
        for e in kubectl_json("get", "events", "-n", self.ns)["items"]:
            if e.get("type") == "Warning":
                out.setdefault(e["involvedObject"].get("name"), set()).add(e.get("reason"))
        return out

    # teardown

    def cleanup(self, keep):
        if keep:
            print(f"kept namespace {self.ns} (operator log {self.operator_log})")
            if self.operator_alive():
                self.operator.terminate()
            return
        # The operator deletes every StreamJob first (invalid ones included); what it has not
        # released after 45 s loses its finalizer, so that no namespace is left behind.
        def jobs():
            try:
                return self.jobs()
            except SweepError:
                return {}

        t0 = time.monotonic()
        kubectl("delete", "streamjobs", "--all", "-n", self.ns, "--wait=false")
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and jobs():
            time.sleep(1)
        left = jobs()
        if left:
            print(f"warning: {len(left)} StreamJob(s) not released by the operator within 45 s: "
                  f"{', '.join(sorted(n[:40] for n in left))}", file=sys.stderr)
        print(f"[hostile] StreamJobs deleted in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        kubectl("delete", "namespace", self.ns, "--wait=false")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            r = kubectl("get", "namespace", self.ns, "-o", "name")
            if r.returncode != 0 and "NotFound" in r.stderr:
                break
            for name, job in jobs().items():
                if job["metadata"].get("finalizers"):
                    kubectl("patch", "streamjob", name, "-n", self.ns, "--type=merge",
                            "-p", '{"metadata":{"finalizers":[]}}')
            time.sleep(1)
        else:
            print(f"warning: namespace {self.ns} still exists after 90 s", file=sys.stderr)
        print(f"[hostile] namespace deleted after {time.monotonic() - t0:.0f}s", file=sys.stderr)
        if self.operator_alive():
            self.operator.terminate()
            try:
                self.operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.operator.kill()
        shutil.rmtree(self.cluster_dir / "out" / self.ns, ignore_errors=True)
        # s3s-fs keeps a bucket as a folder of its data dir; the Rust tests leave theirs, we do not.
        bucket_dir = self.cluster_dir / "s3" / self.bucket
        if bucket_dir.is_dir():
            shutil.rmtree(bucket_dir, ignore_errors=True)


# ---- the cases ---------------------------------------------------------------------------------

API = "rejected by API server"
KUBECTL = "rejected by kubectl"
STATUS = "reported in status"
STORAGE = "failure in status"
PRUNED = "pruned by API server"
CLAMPED = "runs, clamped"
KEPT = "reported, pod kept"


class Case:
    """One hostile manifest: `mutate(manifest, sweep)` spoils a valid one; `hint` must appear in the
    API server's message (API) or in status and its event (STATUS, STORAGE)."""

    def __init__(self, name, expect, hint, mutate, flags=("--validate=false",), job=None, event=True):
        self.name, self.expect, self.hint, self.mutate, self.flags = name, expect, hint, mutate, flags
        self.event = event  # a Warning event is expected (STATUS)
        self.job = job or f"c-{name}"
        self.outcome, self.reason, self.ok = None, "", False
        self.before = None  # KEPT: the running job's pod and attempt before the bad spec

    def build(self, sweep):
        m = sweep.manifest(self.job)
        self.mutate(m, sweep)
        return m


def spec(**fields):
    def mutate(m, _):
        m["spec"].update(fields)
    return mutate


def at(path, value):
    """Set (or with value DELETE remove) a nested field of the manifest: at("spec.job.name", "x")."""
    def mutate(m, _):
        *parents, last = path.split(".")
        node = m
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return mutate


def chain(*mutations):
    def mutate(m, s):
        for f in mutations:
            f(m, s)
    return mutate


def s3(**fields):
    def mutate(m, _):
        m["spec"]["storage"]["s3"].update(fields)
    return mutate


DELETE = object()
LONG_NAME = ("x" * 62 + ".") * 3 + "x" * 63  # 252 characters, a valid object name (DNS subdomain)


def deep(levels):
    node = {"leaf": 1}
    for _ in range(levels):
        node = {"n": node}
    return node


def cases():
    sp = lambda m, s: f"s3://{s.bucket}/{s.ns}/{m['metadata']['name']}"  # noqa: E731 (job storage root)
    return [
        # Wrong types and bounds the CRD schema enforces.
        Case("parallelism-string", API, "spec.parallelism", spec(parallelism="two")),
        Case("parallelism-float", API, "spec.parallelism", spec(parallelism=1.5)),
        Case("parallelism-zero", API, "spec.parallelism", spec(parallelism=0)),
        Case("parallelism-negative", API, "spec.parallelism", spec(parallelism=-3)),
        Case("parallelism-huge", API, "spec.parallelism", spec(parallelism=1_000_000_000)),
        Case("parallelism-1e30", API, "spec.parallelism", spec(parallelism=1e30)),
        Case("max-parallelism-zero", API, "spec.maxParallelism", spec(maxParallelism=0)),
        Case("max-parallelism-32769", API, "spec.maxParallelism", spec(maxParallelism=32769)),
        Case("workers-zero", API, "spec.workers", spec(workers=0)),
        Case("checkpoint-string", API, "spec.checkpoint", spec(checkpoint="10s")),
        Case("params-not-a-map", API, "spec.job.params", at("spec.job.params", ["events", 5])),
        Case("params-nested", API, "spec.job.params", at("spec.job.params", {"events": deep(3)})),
        Case("params-int-overflow", API, "spec.job.params", at("spec.job.params.events", 10_000_000_000)),
        Case("job-name-bad-chars", API, "spec.job.name", at("spec.job.name", "Windowed_Count; rm -rf /")),
        Case("interval-abc", API, "spec.checkpoint.interval", at("spec.checkpoint.interval", "abc")),
        Case("interval-negative", API, "spec.checkpoint.interval", at("spec.checkpoint.interval", "-1s")),
        Case("timeout-no-unit", API, "spec.checkpoint.timeout", at("spec.checkpoint.timeout", "10")),
        Case("checkpoint-mode-enum", API, "spec.checkpoint.mode", at("spec.checkpoint.mode", "sometimes")),
        Case("upgrade-mode-enum", API, "spec.upgradeMode", spec(upgradeMode="yolo")),
        Case("max-restarts-negative", API, "spec.restartPolicy.maxRestarts",
             at("spec.restartPolicy.maxRestarts", -1)),
        Case("restart-policy-string", API, "spec.restartPolicy", spec(restartPolicy="always")),
        Case("image-empty", API, "spec.image", spec(image="")),
        Case("image-huge", API, "spec.image", spec(image="a" * 5000)),
        Case("pull-policy-enum", API, "spec.imagePullPolicy", spec(imagePullPolicy="Sometimes")),
        Case("no-job", API, "spec.job", at("spec.job", DELETE)),
        Case("no-storage", API, "spec.storage", at("spec.storage", DELETE)),
        Case("bucket-missing", API, "spec.storage.s3.bucket", at("spec.storage.s3.bucket", DELETE)),
        Case("bucket-bad-chars", API, "spec.storage.s3.bucket", s3(bucket="../My_Bucket")),
        Case("prefix-bad-chars", API, "spec.storage.s3.prefix", s3(prefix="a b\n$(id)")),
        Case("endpoint-not-http", API, "spec.storage.s3.endpoint", s3(endpoint="file:///etc/passwd")),
        Case("secret-name-traversal", API, "spec.storage.s3.credentialsSecret.name",
             s3(credentialsSecret={"name": "../../kube-system/admin"})),
        Case("name-bad-chars", API, "metadata.name", at("metadata.name", "Bad_Name!"), job="Bad_Name!"),
        Case("name-254", API, "metadata.name", at("metadata.name", "a" * 254), job="a" * 254),
        Case("label-value-huge", API, "metadata.labels", at("metadata.labels", {"team": "x" * 300})),
        Case("annotations-300k", API, "metadata.annotations",
             at("metadata.annotations", {"blob": "x" * 300_000})),
        # The v1.20 API server has no field validation: kubectl checks unknown fields against the
        # published schema (--validate=strict, its default); without that the API server prunes them.
        Case("unknown-field-strict", KUBECTL, "paralelism", spec(paralelism=4), flags=("--validate=strict",)),
        Case("unknown-field-lenient", PRUNED, "paralelism", spec(paralelism=4),
             flags=("--validate=false", "--dry-run=server")),

        # Accepted by the schema, reported by the operator's validation.
        Case("parallelism-above-max", STATUS, "spec.parallelism", spec(parallelism=200, maxParallelism=128)),
        Case("unknown-job", STATUS, "spec.job.name", at("spec.job.name", "no-such-job")),
        Case("job-name-and-entrypoint", STATUS, "spec.job", at("spec.job.entrypoint", ["/bin/sh", "-c", "id"])),
        Case("job-neither", STATUS, "spec.job", at("spec.job", {})),
        Case("interval-zero", STATUS, "spec.checkpoint.interval", at("spec.checkpoint.interval", "0s")),
        Case("timeout-zero", STATUS, "spec.checkpoint.timeout", at("spec.checkpoint.timeout", "0ms")),
        Case("max-checkpoint-age-zero", STATUS, "spec.maxCheckpointAge", spec(maxCheckpointAge="0s")),
        Case("backoff-initial-above-max", STATUS, "spec.restartPolicy.backoff",
             at("spec.restartPolicy.backoff", {"initial": "5m", "max": "1s"})),
        Case("secret-missing", STATUS, "spec.storage.s3.credentialsSecret.name",
             s3(credentialsSecret={"name": "no-such-secret"})),
        Case("secret-without-keys", STATUS, "spec.storage.s3.credentialsSecret",
             s3(credentialsSecret={"name": "empty-keys"})),
        Case("prefix-dotdot", STATUS, "spec.storage.s3.prefix", s3(prefix="team/../other-team")),
        Case("prefix-dot", STATUS, "spec.storage.s3.prefix", s3(prefix="./team")),
        Case("prefix-double-slash", STATUS, "spec.storage.s3.prefix", s3(prefix="team//prod")),
        Case("prefix-absolute", STATUS, "spec.storage.s3.prefix", s3(prefix="/etc")),
        Case("path-relative", STATUS, "spec.storage.path",
             chain(at("spec.storage.s3", DELETE), at("spec.storage.path", "snapshots/here"))),
        Case("path-dotdot", STATUS, "spec.storage.path",
             chain(at("spec.storage.s3", DELETE), at("spec.storage.path", "/tmp/../etc/streamjob"))),
        Case("storage-both", STATUS, "spec.storage", at("spec.storage.path", "/tmp/streamjob-hostile")),
        Case("storage-neither", STATUS, "spec.storage", at("spec.storage", {})),
        Case("initial-savepoint-elsewhere", STATUS, "spec.initialSavepointPath",
             spec(initialSavepointPath="s3://another-bucket/ns/job/savepoints/sp-0000000001-000001")),
        Case("initial-savepoint-dotdot", STATUS, "spec.initialSavepointPath",
             lambda m, s: m["spec"].update(initialSavepointPath=sp(m, s) + "/savepoints/../../other/savepoints/sp-1")),
        Case("initial-savepoint-relative", STATUS, "spec.initialSavepointPath",
             spec(initialSavepointPath="savepoints/sp-0000000001-000001")),
        # No event: the Event API names an event `<object name>.<suffix>`, over 253 characters here.
        Case("name-252", STATUS, "metadata.name", at("metadata.name", LONG_NAME), job=LONG_NAME, event=False),
        Case("name-64", STATUS, "metadata.name", at("metadata.name", "n" * 64), job="n" * 64),
        Case("name-dots", STATUS, "metadata.name", at("metadata.name", "team.job"), job="team.job"),
        Case("name-leading-digit", STATUS, "metadata.name", at("metadata.name", "1st-job"), job="1st-job"),
        Case("resources-bad-quantity", STATUS, "spec.resources",
             spec(resources={"limits": {"cpu": "lots", "memory": "-1Gi"}})),
        Case("pod-template-wrong-types", STATUS, "spec.podTemplate",
             spec(podTemplate={"spec": {"containers": "worker", "nodeSelector": ["a"]}})),
        # Only the API server can judge these: the operator's preflight dry run of the attempt's objects.
        Case("pod-template-bad-label", STATUS, "labels",
             spec(podTemplate={"metadata": {"labels": {"bad key!": "v" * 100}}})),
        Case("service-account-missing", STATUS, "no-such-account", spec(serviceAccountName="no-such-account")),
        Case("requests-above-limits", STATUS, "must be less than or equal to cpu limit",
             spec(resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1"}})),
        Case("params-over-1mib", STATUS, "ConfigMap",
             at("spec.job.params", {f"p{i}": "x" * 4000 for i in range(280)})),
        Case("running-job-bad-pod-template", KEPT, "labels",
             spec(podTemplate={"metadata": {"labels": {"team": "a b c"}}}), job="victim"),

        # Only S3 can tell: the job is accepted and its failure surfaced in status.
        Case("bucket-does-not-exist", STORAGE, "bucket", s3(bucket="no-such-bucket-hostile")),
        Case("bucket-wrong-credentials", STORAGE, "access",
             s3(credentialsSecret={"name": "wrong-credentials"})),

        # Documented: at most `parallelism` worker pods run.
        Case("workers-above-parallelism", CLAMPED, "1 pod",
             chain(spec(parallelism=1, workers=5))),
    ]


# ---- judging -----------------------------------------------------------------------------------

def ready_condition(job):
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c
    return {}


def status_text(job):
    """Everything status says about the job, for matching a hint."""
    st = job.get("status") or {}
    parts = [st.get("message") or "", ready_condition(job).get("message") or "",
             (st.get("lastFailure") or {}).get("message") or ""]
    return " | ".join(p for p in parts if p)


def reported_invalid(job, hint):
    c = ready_condition(job)
    return (c.get("status") == "False" and c.get("reason") == "InvalidSpec"
            and hint.lower() in (c.get("message") or "").lower())


def storage_reported(job, hint):
    text = status_text(job).lower()
    return hint.lower() in text and any(w in text for w in ["storage", "s3", "bucket"])


def shorten(text, width=110):
    text = " ".join(text.split())
    for noise in ["Error from server (Invalid): ", "error: ", "Error from server: "]:
        text = text.replace(noise, "")
    return text if len(text) <= width else text[: width - 3] + "..."


def operator_lines_about(sweep, job):
    try:
        text = re.sub(r"\x1b\[[0-9;]*m", "", sweep.operator_log.read_text(errors="replace"))
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if f"job={job} " in line or f'job="{job}"' in line
               or line.endswith(f"job={job}"))


def wait_until(what, timeout, poll, cond):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise SweepError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def running_worker(sweep, name):
    job = sweep.jobs().get(name)
    if not job or (job.get("status") or {}).get("phase") != "Running":
        return None
    pods = [p for p in sweep.pods_of(name) if (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")]
    return (job, pods[0]) if pods else None


def snapshot_of(job, pod):
    return {"uid": pod["metadata"]["uid"], "attempt": job["status"].get("jobAttempt"),
            "restarts": job["status"].get("restarts", 0)}


def apply_cases(sweep, selected):
    """Apply every case (a few at a time); the answer judges the API, KUBECTL and PRUNED ones."""
    def send(case):
        extra = ("-o", "json") if case.expect == PRUNED else ()
        return sweep.apply(case.build(sweep), *case.flags, *extra)

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(send, selected))
    accepted = []
    for case, r in zip(selected, answers):
        message = (r.stderr or r.stdout).strip()
        if case.expect == PRUNED:
            obj = json.loads(r.stdout) if r.returncode == 0 else {}
            case.ok = bool(obj) and case.hint not in json.dumps(obj.get("spec") or {})
            if r.returncode != 0:
                case.outcome, case.reason = "WRONG: rejected", shorten(message)
            elif case.ok:
                case.outcome = PRUNED
                case.reason = f"dry run: the stored spec has no {case.hint!r}; the valid rest would run"
            else:
                case.outcome = "WRONG: field kept"
            continue
        if r.returncode != 0:
            # kubectl's own schema check (client side) says `error validating "STDIN"`.
            by = KUBECTL if 'error validating "STDIN"' in message else API
            case.outcome, case.reason = by, shorten(message)
            case.ok = case.expect == by and case.hint.lower() in message.lower()
            if case.expect == by and not case.ok:
                case.outcome = "WRONG: message does not name " + case.hint
            elif case.expect != by:
                case.outcome = f"WRONG: {by}"
            continue
        accepted.append(case)
    return accepted


def judge_accepted(sweep, accepted, timeout):
    """Poll status of the accepted cases until each one is reported (or the timeout)."""
    def settled(case, job):
        if case.expect == STORAGE:
            return storage_reported(job, case.hint)
        if case.expect == CLAMPED:
            return (job.get("status") or {}).get("phase") == "Running"
        return reported_invalid(job, case.hint)  # STATUS, KEPT, and API cases accepted by mistake

    deadline = time.monotonic() + timeout
    pending = list(accepted)
    jobs = {}
    while pending and time.monotonic() < deadline:
        jobs = sweep.jobs()
        pending = [c for c in pending if not (c.job in jobs and settled(c, jobs[c.job]))]
        if pending:
            time.sleep(1)
    if pending:
        print(f"[hostile] not settled within {timeout:.0f}s: {', '.join(c.name for c in pending)}",
              file=sys.stderr)
    # A short wait after the report: a pod created late is caught too.
    time.sleep(4)
    jobs, pods, warnings = sweep.jobs(), sweep.pods(), sweep.warning_events()
    for case in accepted:
        job = jobs.get(case.job)
        if job is None:
            case.outcome, case.reason = "WRONG: object gone", ""
            continue
        text = status_text(job)
        own = sweep.pods_of(case.job, pods)
        case.reason = shorten(text) if text else "(no status message)"
        if case.expect == API:
            case.outcome = "WRONG: accepted by API server" + (f", {len(own)} pod(s)" if own else "")
        elif case.expect == STATUS:
            if not reported_invalid(job, case.hint):
                case.outcome = f"WRONG: not reported (phase {(job.get('status') or {}).get('phase')})"
            elif own:
                case.outcome = f"WRONG: {len(own)} pod(s) created"
            elif case.event and "InvalidSpec" not in warnings.get(case.job, set()):
                case.outcome = "WRONG: no Warning event"
            else:
                case.outcome, case.ok = STATUS, True
                if not case.event:
                    case.reason = shorten("[no event: its name would be too long] " + text)
        elif case.expect == STORAGE:
            lines = operator_lines_about(sweep, case.job)
            if not storage_reported(job, case.hint):
                case.outcome = f"WRONG: not reported (phase {(job.get('status') or {}).get('phase')})"
            elif not warnings.get(case.job):
                case.outcome = "WRONG: no Warning event"
            elif own:
                case.outcome = f"WRONG: {len(own)} pod(s) without readable storage"
            elif lines > 30:
                case.outcome = f"WRONG: hot loop ({lines} operator log lines)"
            else:
                case.outcome, case.ok = STORAGE, True
                case.reason = shorten(f"[{len(own)} pod(s), {lines} log lines] " + text)
        elif case.expect == KEPT:
            live = [p for p in own if not p["metadata"].get("deletionTimestamp")]
            uids = {p["metadata"]["uid"] for p in live}
            attempt = (job.get("status") or {}).get("jobAttempt")
            if not reported_invalid(job, case.hint):
                case.outcome = f"WRONG: not reported (phase {(job.get('status') or {}).get('phase')})"
            elif uids != {case.before["uid"]} or attempt != case.before["attempt"]:
                case.outcome = f"WRONG: running pod touched (pods {sorted(uids)}, attempt {attempt})"
            elif "InvalidSpec" not in warnings.get(case.job, set()):
                case.outcome = "WRONG: no Warning event"
            else:
                case.outcome, case.ok = KEPT, True
        elif case.expect == CLAMPED:
            want = min(job["spec"].get("workers", 1), job["spec"].get("parallelism", 1))
            live = [p for p in own if not p["metadata"].get("deletionTimestamp")]
            case.ok = (job.get("status") or {}).get("phase") == "Running" and len(live) == want
            case.outcome = CLAMPED if case.ok else f"WRONG: {len(live)} pod(s), phase {(job.get('status') or {}).get('phase')}"
            case.reason = f"workers {job['spec'].get('workers')} > parallelism {job['spec'].get('parallelism')}: {len(live)} pod(s)"


# ---- main --------------------------------------------------------------------------------------

def _terminated(signum, _frame):
    raise SystemExit(f"stopped by signal {signum}")  # runs the cleanup in `finally`


def main():
    signal.signal(signal.SIGTERM, _terminated)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", help="streamjob binary of the operator (default /tmp/sj-bin/streamjob, "
                                      "$STREAMJOB_BIN, target/debug/streamjob)")
    parser.add_argument("--only", help="comma-separated case names")
    parser.add_argument("--keep", action="store_true", help="keep the namespace (and the operator log)")
    parser.add_argument("--report-timeout", type=float, default=45, help="seconds for the operator to report")
    args = parser.parse_args()
    load_cluster_env()
    binary = find_binary(args.bin)
    selected = cases()
    if args.only:
        wanted = set(args.only.split(","))
        selected = [c for c in selected if c.name in wanted]
    names = [c.name for c in cases()]
    assert len(names) == len(set(names)), "case names must be unique"

    started = time.monotonic()

    def log(message):
        print(f"[hostile {time.monotonic() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    sweep = Sweep(binary)
    problems = []
    log(f"namespace {sweep.ns}, operator {binary}, {len(selected)} cases")
    try:
        sweep.create_namespace()
        sweep.create_bucket()
        keys = {"AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
                "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]}
        sweep.create_secret(SECRET, keys)
        sweep.create_secret("empty-keys", {"access-key": "x", "secret-key": "y"})
        sweep.create_secret("wrong-credentials", {"AWS_ACCESS_KEY_ID": "nobody",
                                                  "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
        sweep.start_operator()

        # The healthy job, and the running jobs that the KEPT cases will spoil.
        kept = [c for c in selected if c.expect == KEPT]
        for name in ["healthy"] + [c.job for c in kept]:
            r = sweep.apply(sweep.manifest(name))
            if r.returncode != 0:
                raise SweepError(f"the valid job {name} was rejected: {r.stderr.strip()}")
        job, pod = wait_until("the healthy job to run", 90, 0.5, lambda: running_worker(sweep, "healthy"))
        before = snapshot_of(job, pod)
        checkpoint = lambda: ((sweep.jobs().get("healthy") or {}).get("status") or {}).get("lastCheckpoint") or {}  # noqa: E731
        first_checkpoint = checkpoint().get("id")
        for case in kept:
            case.before = snapshot_of(*wait_until(f"{case.job} to run", 90, 0.5,
                                                  lambda c=case: running_worker(sweep, c.job)))
        log(f"healthy job running (attempt {before['attempt']}, pod {pod['metadata']['name']})")

        accepted = apply_cases(sweep, selected)
        log(f"{len(selected) - len(accepted)} cases answered at once, {len(accepted)} accepted; "
            "waiting for the operator")
        judge_accepted(sweep, accepted, args.report_timeout)
        log("accepted cases judged; restarting the operator")

        # A restarted operator reads every StreamJob again (one unreadable object would stop its
        # initial list) and still serves new jobs beside all the hostile ones.
        sweep.restart_operator()
        r = sweep.apply(sweep.manifest("late-valid", rate=100))
        if r.returncode != 0:
            problems.append(f"a valid job applied after the cases was rejected: {r.stderr.strip()}")
        else:
            try:
                wait_until("a valid job applied after the cases to run", 60, 0.5,
                           lambda: running_worker(sweep, "late-valid"))
            except SweepError as e:
                problems.append(str(e))

        log("a new valid job runs after the restart; checking the healthy job")
        # The healthy job: same pod, same attempt, still Running, still checkpointing.
        try:
            wait_until("a checkpoint of the healthy job newer than before the cases", 30, 1,
                       lambda: checkpoint().get("id") not in (None, first_checkpoint))
        except SweepError as e:
            problems.append(str(e))
        now = running_worker(sweep, "healthy")
        if not now:
            problems.append("the healthy job is no longer Running with a worker pod")
        else:
            job, pod = now
            after = snapshot_of(job, pod)
            if after != before:
                problems.append(f"the healthy job was disturbed: before {before}, after {after}")
        if sweep.operator_exits:
            problems.append(f"the operator exited on its own (codes {sweep.operator_exits}); log {sweep.operator_log}")
        if not sweep.operator_alive():
            problems.append(f"the operator exited (code {sweep.operator.returncode}); log {sweep.operator_log}")
        panics = [line for line in sweep.operator_log.read_text(errors="replace").splitlines() if "panicked" in line]
        if panics:
            problems.append(f"the operator panicked: {panics[0][:200]}")
    except SweepError as e:
        problems.append(f"sweep aborted: {e}")
    finally:
        log("cleaning up")
        sweep.cleanup(args.keep)

    width = max(len(c.name) for c in selected)
    print(f"\n{'case'.ljust(width)}  {'expected'.ljust(22)}  {'outcome'.ljust(30)}  reason")
    for c in selected:
        outcome = c.outcome or "WRONG: not judged"
        if not c.ok and not outcome.startswith("WRONG"):
            outcome = "WRONG: " + outcome
        print(f"{c.name.ljust(width)}  {c.expect.ljust(22)}  {outcome.ljust(30)}  {c.reason}")
    wrong = [c.name for c in selected if not c.ok]
    elapsed = time.monotonic() - started
    print(f"\n{len(selected) - len(wrong)}/{len(selected)} cases as expected in {elapsed:.0f}s")
    for p in problems:
        print(f"PROBLEM: {p}")
    if wrong:
        print(f"WRONG: {', '.join(wrong)}")
    return 1 if wrong or problems else 0


if __name__ == "__main__":
    sys.exit(main())
