"""Shared helpers of the side-by-side benchmark (issue 7): run one Nexmark query on our side
(`streamjob run job.yaml`) or on the Flink peer (tests/bench/flink/run.sh), each under
/usr/bin/time for the peak RSS, and return its figures as a dict.

Nothing here builds streamjob: the binary is looked up (see `find_streamjob`), never compiled.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
FLINK_RUN = HERE / "flink" / "run.sh"
CACHE = pathlib.Path(os.environ.get("STREAMJOB_CACHE", pathlib.Path.home() / ".cache" / "streamjob"))
QUERIES = ["q0", "q1", "q2", "q5", "q7", "q8"]
TIME = "/usr/bin/time"


class UnknownJob(Exception):
    """Our binary does not have this job yet."""


class RunFailed(Exception):
    """A run exited non-zero; the message holds the end of its stderr."""


def find_streamjob(explicit=None):
    """The release binary of streamjob, or None: --bin, $STREAMJOB_BIN, $CARGO_TARGET_DIR/release,
    $STREAMJOB_CACHE/target/release (what .ci/run uses), then the repository's target/release."""
    candidates = [explicit, os.environ.get("STREAMJOB_BIN")]
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(pathlib.Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "streamjob")
    candidates += [CACHE / "target" / "release" / "streamjob", REPO / "target" / "release" / "streamjob"]
    for c in candidates:
        if c and pathlib.Path(c).is_file() and os.access(c, os.X_OK):
            return str(pathlib.Path(c).resolve())
    return None


def ensure_time():
    if not os.access(TIME, os.X_OK):
        raise SystemExit("needs GNU time at /usr/bin/time for peak RSS: apt-get install time")


def build_flink():
    """Install Flink (first use) and compile the Flink job; returns the Flink version string."""
    subprocess.run(["bash", str(HERE / "flink" / "build.sh")], check=True, stdout=subprocess.DEVNULL)
    from importlib.metadata import version  # noqa: PLC0415

    try:
        return version("apache-flink")
    except Exception:  # not running in the Flink venv
        out = subprocess.run([str(CACHE / "flink-venv" / "bin" / "python"), "-c",
                              "from importlib.metadata import version; print(version('apache-flink'))"],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()


def supports_stats_json(binary):
    out = subprocess.run([binary, "run", "--help"], capture_output=True, text=True)
    return "--stats-json" in out.stdout + out.stderr


def _timed(cmd, work, env=None):
    """Run cmd under /usr/bin/time; returns (completed process, wall seconds, peak RSS KiB)."""
    rss = work / "rss"
    started = time.monotonic()
    proc = subprocess.run([TIME, "-f", "%M", "-o", str(rss)] + cmd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)
    wall = time.monotonic() - started
    try:
        peak = int(rss.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        peak = None
    return proc, wall, peak


def _tail(text, lines=15):
    return "\n".join(text.strip().splitlines()[-lines:])


class S3Server:
    """A real S3-protocol server on this machine for the rows with snapshots in S3: an s3s-fs
    process (tests/tools/install-s3s-fs.sh, or $S3S_FS_BIN) serving a temporary folder, one
    bucket. Use as a context manager; `storage()` is the manifest's spec.storage and `env()` the
    credentials a `streamjob run` reads from the environment."""

    ACCESS_KEY, SECRET_KEY, BUCKET = "bench-access", "bench-secret", "snapshots"

    def __init__(self):
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="bench-s3-"))
        self.proc = None
        self.port = None
        self.prefixes = 0

    @staticmethod
    def binary():
        if os.environ.get("S3S_FS_BIN"):
            return os.environ["S3S_FS_BIN"]
        proc = subprocess.run(["bash", str(REPO / "tests" / "tools" / "install-s3s-fs.sh")],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RunFailed(f"s3s-fs is not installed: {_tail(proc.stderr)}")
        return proc.stdout.strip().splitlines()[-1]

    def __enter__(self):
        (self.root / "data" / self.BUCKET).mkdir(parents=True)  # s3s-fs: a bucket is a folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        log = open(self.root / "s3s-fs.log", "w")
        self.proc = subprocess.Popen([self.binary(), "--host", "127.0.0.1", "--port", str(self.port),
                                      "--access-key", self.ACCESS_KEY, "--secret-key", self.SECRET_KEY,
                                      str(self.root / "data")], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RunFailed(f"s3s-fs did not start listening on port {self.port}")

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def storage(self, prefix=None):
        """spec.storage (YAML flow text) under `prefix`; by default a fresh prefix, so runs never
        see each other's snapshots."""
        if prefix is None:
            self.prefixes += 1
            prefix = f"run-{self.prefixes}"
        return (f"{{s3: {{bucket: {self.BUCKET}, prefix: {prefix}, region: us-east-1, "
                f"endpoint: 'http://127.0.0.1:{self.port}', forcePathStyle: true}}}}")

    def env(self):
        return dict(os.environ, AWS_ACCESS_KEY_ID=self.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=self.SECRET_KEY)

    def drop(self):
        """Delete the stored snapshots of finished runs (s3s-fs keeps objects as plain files)."""
        for child in (self.root / "data" / self.BUCKET).iterdir():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()


def job_yaml(job, events, parallelism, interval, output, snapshots, sink="file", storage=None):
    """A StreamJob manifest for local mode, as in tests/bench/local.sh. sink: file | discard.
    storage: spec.storage as YAML flow text (default: the local folder `snapshots`)."""
    return f"""apiVersion: streamjob.io/v1alpha1
kind: StreamJob
metadata: {{name: bench}}
spec:
  parallelism: {parallelism}
  job: {{name: {job}, params: {{events: {events}, output: {output}, sink: {sink}}}}}
  checkpoint: {{interval: {interval}}}
  storage: {storage or '{path: ' + str(snapshots) + '}'}
"""


def _manifest_checkpoints(snapshots):
    """Fallback when --stats-json is not there: the retained checkpoints' manifests."""
    rows = []
    for manifest in sorted(pathlib.Path(snapshots).glob("checkpoints/*/_manifest.json")):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        size = sum(f.stat().st_size for f in manifest.parent.rglob("*") if f.is_file())
        rows.append({"id": m.get("checkpointId"), "durationMs": m.get("durationMs"), "sizeBytes": size})
    return rows


def run_streamjob(binary, query, events, parallelism, checkpoint_ms, stats_json, keep_output=None,
                  sink="file", s3=None):
    """One run of nexmark-<query> in local mode. checkpoint_ms None = 'off', which our manifest
    expresses as a 1 h interval (only the final checkpoint of a bounded job is taken).
    sink: file (the exactly-once file sink) or discard (like Flink's DiscardingSink).
    s3: an S3Server to keep the snapshots in (default: a local folder)."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-sj-"))
    try:
        output = pathlib.Path(keep_output) if keep_output else work / "out"
        interval = "1h" if checkpoint_ms is None else f"{checkpoint_ms}ms"
        manifest = work / "job.yaml"
        if keep_output:
            sink = "file"
        manifest.write_text(job_yaml(f"nexmark-{query}", events, parallelism, interval, output,
                                     work / "snap", sink, s3.storage() if s3 else None))
        cmd = [binary, "run", str(manifest), "--quiet"]
        if stats_json:
            cmd += ["--stats-json", str(work / "stats.json")]
        try:
            proc, wall, peak = _timed(cmd, work, s3.env() if s3 else None)
        finally:
            if s3:
                s3.drop()
        if proc.returncode != 0:
            err = proc.stderr + proc.stdout
            if "unknown job" in err:
                raise UnknownJob(f"nexmark-{query}")
            raise RunFailed(f"streamjob nexmark-{query} exited {proc.returncode}:\n{_tail(err)}")
        result = {"engine": "streamjob", "peakRssKiB": peak, "wallSeconds": wall}
        if stats_json and (work / "stats.json").is_file():
            stats = json.loads((work / "stats.json").read_text())
            result.update(stats)
            result["runMillisHow"] = "--stats-json runMillis (excludes process start and restore)"
        else:
            result["sourceRecords"] = events
            result["runMillis"] = wall * 1000
            result["runMillisHow"] = "wall clock of the process (includes start-up: no --stats-json)"
            result["checkpoints"] = _manifest_checkpoints(work / "snap")
            result["checkpointStats"] = "retained manifests only (no --stats-json)"
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_flink(query, events, parallelism, checkpoint_ms, backend, output=None, file_sink=False):
    """One run of the Flink peer (local MiniCluster in one JVM). Results go to a discarding sink,
    or to `output` (kept), or with file_sink to line files in a temporary folder (deleted)."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-flink-"))
    if file_sink and not output:
        output = work / "out"
    try:
        cmd = ["bash", str(FLINK_RUN), "--query", query, "--events", str(events),
               "--parallelism", str(parallelism), "--state-backend", backend,
               "--checkpoint-interval", "off" if checkpoint_ms is None else str(checkpoint_ms),
               "--checkpoint-dir", str(work / "checkpoints"), "--stats-json", str(work / "stats.json")]
        if output:
            cmd += ["--output", str(output)]
        # run.sh execs the JVM, so /usr/bin/time's peak RSS is the JVM's.
        proc, wall, peak = _timed(cmd, work)
        if proc.returncode != 0 or not (work / "stats.json").is_file():
            raise RunFailed(f"Flink {query} exited {proc.returncode}:\n{_tail(proc.stderr)}")
        result = json.loads((work / "stats.json").read_text())
        result["peakRssKiB"] = peak
        result["wallSeconds"] = wall
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def read_lines(folder, committed_only=True):
    """Sorted lines of every part file in folder (our sink hides in-progress files as dot-files)."""
    lines = []
    for f in sorted(pathlib.Path(folder).rglob("*")):
        if not f.is_file() or (committed_only and f.name.startswith(".")):
            continue
        if not f.name.startswith("part-"):
            continue
        lines += [line for line in f.read_text().splitlines() if line]
    return sorted(lines)
