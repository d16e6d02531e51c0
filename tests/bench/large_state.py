#!/usr/bin/env python3
"""Checkpoints of large keyed state, full vs incremental, side by side in one run (issue 4 target:
p99 checkpoint <= 1 s with 1 GB of keyed state using incremental checkpoints; peak memory <= 2x
live state). The `large-state` job keeps `keys` values of `value-bytes` bytes; after the first
`keys` records fill the state, every record rewrites one key's value (cyclically), at `rate`.

  tests/bench/large_state.py [--bin target/release/streamjob] [--keys 8000000] [--rate 1000000]
                             [--steady-seconds 30] [--runs 1] [--storage folder|s3|both] [--out FILE.md]

Prints a markdown table: throughput, checkpoint duration p50/p99 (steady phase: checkpoints
after the fill), the synchronous part p50/p99 (how long the slowest task stopped processing to copy
and encode its state; the upload is asynchronous), bytes uploaded and referenced per checkpoint (p50), peak RSS, and the state size
(the referenced bytes of the last full checkpoint). Peak RSS is sampled while the sources run
(before the final checkpoint a bounded run ends with); a run without periodic checkpoints gives the
memory of the live state itself, so the RSS ratio shows what checkpoints add. Restore: a second
run restores the first one's final checkpoint: from its start until every task has loaded its state
(its wall time minus its own run time, plus the tasks' loading inside that run). Snapshots go to a
local folder (fsync'd), or with --storage s3 to an S3-protocol server on this machine (s3s-fs, which
writes the objects to the local disk), or both side by side; deleted after each run; retained: 1.
"""
import argparse, contextlib, json, os, pathlib, shutil, statistics, subprocess, sys, tempfile, time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.dont_write_bytecode = True
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import benchlib  # noqa: E402
ap = argparse.ArgumentParser()
ap.add_argument("--bin", default=str(ROOT / "target/release/streamjob"))
ap.add_argument("--keys", type=int, default=8_000_000)
ap.add_argument("--value-bytes", type=int, default=100)
ap.add_argument("--rate", type=int, default=1_000_000)
ap.add_argument("--steady-seconds", type=int, default=30)
ap.add_argument("--parallelism", type=int, default=2)
ap.add_argument("--runs", type=int, default=1)
ap.add_argument("--storage", choices=("folder", "s3", "both"), default="folder",
                help="where the snapshots go (s3: an s3s-fs server, $S3S_FS_BIN or tests/tools/install-s3s-fs.sh)")
ap.add_argument("--out")
a = ap.parse_args()
events = a.keys + a.rate * a.steady_seconds


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))] if v else None


def rss_kib(pid):
    """VmRSS of a process in KiB; 0 once it is gone."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run(mode, s3=None):
    """One run (and its restore); s3: an S3Server for the snapshots (None: a local folder)."""
    incremental = mode == "incremental"
    interval = "1h" if mode == "off" else "1s"
    w = pathlib.Path(tempfile.mkdtemp(prefix="large-state-", dir=os.environ.get("BENCH_TMP")))
    storage = s3.storage("large-state") if s3 else f"{{path: {w}/snap}}"
    env = s3.env() if s3 else None
    try:
        (w / "job.yaml").write_text(f"""apiVersion: streamjob.io/v1alpha1
kind: StreamJob
metadata: {{name: large-state}}
spec:
  parallelism: {a.parallelism}
  job: {{name: large-state, params: {{keys: {a.keys}, value-bytes: {a.value_bytes}, events: {events}, rate: {a.rate}, sink: discard}}}}
  checkpoint: {{interval: {interval}, timeout: 10m, incremental: {str(incremental).lower()}, retained: 1}}
  storage: {storage}
""")
        # Peak RSS while the sources run (sampled every 250 ms), i.e. before the final checkpoint
        # every bounded run ends with.
        proc = subprocess.Popen([a.bin, "run", str(w / "job.yaml"), "--quiet",
                                 "--stats-json", str(w / "s.json")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env)
        started, running_peak = time.monotonic(), 0
        while proc.poll() is None:
            if time.monotonic() - started < events / a.rate:
                running_peak = max(running_peak, rss_kib(proc.pid))
            time.sleep(0.25)
        err = proc.stderr.read()
        if proc.returncode != 0:
            raise SystemExit(f"streamjob run failed ({proc.returncode}): {err[-2000:]}")
        rss_mib = running_peak / 1024
        s = json.loads((w / "s.json").read_text())
        restore_s = after_restore_uploaded = None
        if mode != "off":
            # Recovery: a second run restores the final checkpoint of the first (its sources are
            # done, so it only restores, takes one checkpoint and ends). Restore time = from the
            # process start until every task has its state: wall time minus the attempt's own run
            # time, plus the part of that run the tasks spent loading the state (start-up,
            # choosing and verifying the snapshot, downloading, decoding and loading).
            t0 = time.monotonic()
            subprocess.run([a.bin, "run", str(w / "job.yaml"), "--quiet", "--stats-json", str(w / "r.json")],
                           check=True, capture_output=True, env=env)
            wall = time.monotonic() - t0
            r = json.loads((w / "r.json").read_text())
            restore_s = wall - r["runMillis"] / 1000
            # The tasks load the downloaded state as they open, inside runMillis: add that part
            # (restoreMillis counts from the attempt's start to every task loaded, and
            # restoreDownloadMillis is its part before the tasks started).
            if r.get("restoreMillis") is not None and r.get("restoreDownloadMillis") is not None:
                restore_s += (r["restoreMillis"] - r["restoreDownloadMillis"]) / 1000
            # What the restored attempt's one checkpoint wrote: with incremental checkpoints it
            # builds on the restored files, and nothing changed since.
            if r["checkpoints"]:
                first = r["checkpoints"][0]
                after_restore_uploaded = first.get("uploadedBytes", first["sizeBytes"])
    finally:
        shutil.rmtree(w, ignore_errors=True)
        if s3:
            s3.drop()
    cps = s["checkpoints"] if mode != "off" else []
    # Steady phase: the checkpoints after the fill (the fill takes keys/rate seconds).
    fill = a.keys / a.rate
    steady = cps[int(fill) + 1:] or cps
    return {
        "events_per_s": s["sourceRecords"] / (s["runMillis"] / 1000),
        "checkpoints": len(cps),
        "p50": pct([c["durationMs"] for c in steady], 0.5),
        "p99": pct([c["durationMs"] for c in steady], 0.99),
        "max": max((c["durationMs"] for c in steady), default=None),
        # The synchronous part (processing stopped on the slowest task), where the binary reports it.
        "sync_p50": pct([c["syncMaxMicros"] / 1000 for c in steady if "syncMaxMicros" in c], 0.5),
        "sync_p99": pct([c["syncMaxMicros"] / 1000 for c in steady if "syncMaxMicros" in c], 0.99),
        "uploaded": pct([c.get("uploadedBytes", c["sizeBytes"]) for c in steady], 0.5),
        "referenced": pct([c["sizeBytes"] for c in steady], 0.5),
        "last_size": s["checkpoints"][-1]["sizeBytes"] if s["checkpoints"] else None,
        "rss_mib": rss_mib,
        "restore_s": restore_s,
        "after_restore_uploaded": after_restore_uploaded,
    }


# (label, checkpoint mode, storage) per row; "off" stores nothing periodically, so it runs once.
MODES = [("off", "off", "folder")]
for storage in (("folder", "s3") if a.storage == "both" else (a.storage,)):
    suffix = "" if a.storage != "both" else f", {'S3' if storage == 's3' else 'folder'}"
    MODES += [(f"full{suffix}", "full", storage), (f"incremental{suffix}", "incremental", storage)]
results = {label: [] for label, _, _ in MODES}
with benchlib.S3Server() if a.storage != "folder" else contextlib.nullcontext() as server:
    for _ in range(a.runs):
        for label, mode, storage in MODES:  # alternate, so a noisy neighbour slows all alike
            results[label].append(run(mode, server if storage == "s3" else None))

med = lambda rs, k: statistics.median(r[k] for r in rs if r[k] is not None)
state_mb = med(results[MODES[1][0]], "last_size") / 1e6
live_mib = med(results["off"], "rss_mib")
where = {"folder": "a local folder", "s3": "S3 (s3s-fs on this machine)",
         "both": "a local folder and to S3 (s3s-fs on this machine)"}[a.storage]
lines = [
    f"large-state: {a.keys:,} keys x {a.value_bytes} B values, {a.rate:,} updates/s, {a.steady_seconds} s after the fill, "
    f"p={a.parallelism}, checkpoints every 1 s to {where}; state {state_mb:,.0f} MB (full checkpoint); medians of {a.runs}",
    "",
    "| checkpoints | events/s | checkpoints/run | duration p50 | p99 | max | synchronous part p50 | p99 | uploaded p50 | referenced p50 | peak RSS | RSS / no-checkpoint RSS | restore | uploaded by the checkpoint after the restore |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
fmt = lambda v, f: "-" if v is None else f(v)
for mode, _, _ in MODES:
    rs = results[mode]
    m = lambda k: med(rs, k) if any(r[k] is not None for r in rs) else None
    lines.append(
        f"| {mode} | {m('events_per_s'):,.0f} | {m('checkpoints'):.0f} | "
        f"{fmt(m('p50'), lambda v: f'{v:,.0f} ms')} | {fmt(m('p99'), lambda v: f'{v:,.0f} ms')} | {fmt(m('max'), lambda v: f'{v:,.0f} ms')} | "
        f"{fmt(m('sync_p50'), lambda v: f'{v:,.0f} ms')} | {fmt(m('sync_p99'), lambda v: f'{v:,.0f} ms')} | "
        f"{fmt(m('uploaded'), lambda v: f'{v / 1e6:,.0f} MB')} | {fmt(m('referenced'), lambda v: f'{v / 1e6:,.0f} MB')} | {m('rss_mib'):,.0f} MiB | "
        f"{m('rss_mib') / live_mib:.2f}x | {fmt(m('restore_s'), lambda v: f'{v:.1f} s')} | "
        f"{fmt(m('after_restore_uploaded'), lambda v: f'{v / 1e6:,.1f} MB')} |")
text = "\n".join(lines)
print(text)
if a.out:
    pathlib.Path(a.out).write_text(text + "\n")
