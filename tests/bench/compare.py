#!/usr/bin/env python3
"""Nexmark side by side: streamjob against Apache Flink on this machine, in one run (issue 7).

For each query (q0 q1 q2 q5 q7 q8), parallelism (1, 2) and checkpointing (off, every 1 s) it runs
our side (`streamjob run job.yaml --quiet`, local mode, snapshots in a local folder) and the Flink
peer (tests/bench/flink: a local MiniCluster in one JVM, checkpoints to a local file:// folder) with
the hashmap and the RocksDB state backends, R times each, interleaved, and reports medians:

- events/s excluding start-up: ours from --stats-json runMillis (excludes process start and restore;
  without that flag: wall clock of the process, labelled), Flink from the first record a source
  subtask emits to the end of input at the last sink subtask (in the job, see BenchStats.java);
- checkpoint duration p50/p99 and size p50 of each run (ours: --stats-json; Flink: the MiniCluster's
  REST /jobs/<id>/checkpoints: end-to-end duration, state size), then the median over the runs;
- peak RSS of the process (/usr/bin/time %M; the JVM for Flink).

Writes tests/bench/results/latest.md (and latest.json, PNG charts) and prints the table.

  tests/bench/compare.py                 # the full run (about 45 min on 2 cores)
  tests/bench/compare.py --quick         # CI smoke: small counts, 1 run, p=2 only, < 5 min
  tests/bench/compare.py --runs 5 --queries q0,q5 --parallelism 2 --bin target/release/streamjob

Never builds streamjob: the release binary is looked up (--bin, $STREAMJOB_BIN,
$CARGO_TARGET_DIR/release, $STREAMJOB_CACHE/target/release, target/release); without one only the
Flink side runs and our columns say so. A job our binary does not have yet shows n/a.
"""

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import traceback

sys.dont_write_bytecode = True
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlib  # noqa: E402

SIMPLE = ("q0", "q1", "q2")
SYSTEMS = ("streamjob", "flink-hashmap", "flink-rocksdb")
# Extra rows: our side with its snapshots in S3 (an s3s-fs server on this machine); only with
# checkpoints on, and never charted (Flink has no S3 here to compare with).
S3_SYSTEM = "streamjob-s3"
LABEL = {"streamjob": "streamjob", "flink-hashmap": "Flink hashmap", "flink-rocksdb": "Flink RocksDB",
         S3_SYSTEM: "streamjob, snapshots in S3"}


def reexec_in_venv():
    """matplotlib lives in the Flink venv that install.sh makes; run there."""
    venv_python = benchlib.CACHE / "flink-venv" / "bin" / "python"
    if pathlib.Path(sys.prefix).resolve() == (benchlib.CACHE / "flink-venv").resolve():
        return
    subprocess.run(["bash", str(HERE / "flink" / "install.sh")], check=True, stdout=subprocess.DEVNULL)
    os.execv(str(venv_python), [str(venv_python), str(pathlib.Path(__file__).resolve())] + sys.argv[1:])


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize_run(r):
    ckpts = r.get("checkpoints") or []
    durations = [c["durationMs"] for c in ckpts if c.get("durationMs") is not None]
    sizes = [c["sizeBytes"] for c in ckpts if c.get("sizeBytes") is not None]
    return {
        "eps": r["sourceRecords"] / (r["runMillis"] / 1000) if r.get("runMillis") else None,
        # Per core: events per second of CPU time the whole process used over the same span as
        # runMillis (every thread; Flink's JIT and GC included), and how many cores that kept busy.
        "epcs": r["sourceRecords"] / (r["cpuMillis"] / 1000) if r.get("cpuMillis") else None,
        "cores": r["cpuMillis"] / r["runMillis"] if r.get("cpuMillis") and r.get("runMillis") else None,
        "ckpts": len(ckpts),
        "ckptP50": percentile(durations, 50),
        "ckptP99": percentile(durations, 99),
        "sizeP50": percentile(sizes, 50),
        "rss": r.get("peakRssKiB"),
        "how": r.get("runMillisHow"),
    }


def cell(runs):
    """Medians over the runs of one configuration; runs is a list of dicts or a status string."""
    if isinstance(runs, str):
        return runs
    s = [summarize_run(r) for r in runs]
    return {k: median([x[k] for x in s])
            for k in ("eps", "epcs", "cores", "ckpts", "ckptP50", "ckptP99", "sizeP50", "rss")} | {
        "how": s[0]["how"], "n": len(s)}


def fmt_eps(v):
    if v is None:
        return "–"
    return f"{v / 1e6:.2f} M" if v >= 1e6 else f"{v / 1e3:.0f} K"


def fmt_ms(v):
    return "–" if v is None else f"{v:.0f} ms"


def fmt_bytes(v):
    if v is None:
        return "–"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= scale:
            return f"{v / scale:.1f} {unit}"
    return f"{v:.0f} B"


def fmt_rss(kib):
    return "–" if kib is None else f"{kib / 1024:.0f} MiB"


def fmt_cost(fraction):
    """Throughput lost to checkpointing (a negative cost means the run was faster: noise)."""
    return f"{fraction * 100:.1f} %" if fraction >= 0 else f"{fraction * 100:.1f} % (faster: noise)"


def ratio(a, b, key="eps"):
    if not isinstance(a, dict) or not isinstance(b, dict) or not a.get(key) or not b.get(key):
        return "–"
    return f"{a[key] / b[key]:.2f}×"


def fmt_cores(v):
    return "–" if v is None else f"{v:.2f}"


def show(c, key, f):
    if isinstance(c, str):
        return c
    return f(c.get(key))


def ckpt_label(ms):
    return "off" if ms is None else f"{ms / 1000:g} s"


def run_matrix(args, binary, stats_json, log, s3=None):
    """Every configuration, the systems interleaved within each repetition. s3: an S3Server for the
    extra rows of our side with snapshots in S3 (None: not run)."""
    results = {}
    loads = []
    for q in args.queries:
        events = args.events_simple if q in SIMPLE else args.events_windowed
        for p in args.parallelism:
            for ck in args.checkpoints:
                key = (q, p, ck)
                systems = SYSTEMS + ((S3_SYSTEM,) if s3 is not None and ck is not None else ())
                runs = {s: [] for s in systems}
                status = {}
                if not binary:
                    status["streamjob"] = status[S3_SYSTEM] = "no binary"
                for rep in range(args.runs):
                    for system in systems:
                        if system in status:
                            continue
                        if system == "flink-rocksdb" and ck is None and not args.rocksdb_off:
                            status[system] = "not run"
                            continue
                        loads.append(os.getloadavg()[0])
                        tag = f"{q} p={p} checkpoints {ckpt_label(ck)} {LABEL[system]} run {rep + 1}/{args.runs}"
                        try:
                            if system in ("streamjob", S3_SYSTEM):
                                r = benchlib.run_streamjob(binary, q, events, p, ck, stats_json,
                                                           sink="file" if args.flink_file_sink else "discard",
                                                           s3=s3 if system == S3_SYSTEM else None)
                            else:
                                r = benchlib.run_flink(q, events, p, ck, system.split("-")[1],
                                                       file_sink=args.flink_file_sink)
                        except benchlib.UnknownJob:
                            status[system] = "n/a"
                            log(f"{tag}: our binary has no job nexmark-{q}: n/a")
                            continue
                        except benchlib.RunFailed as e:
                            status[system] = "failed"
                            log(f"{tag}: FAILED\n{e}")
                            continue
                        runs[system].append(r)
                        s = summarize_run(r)
                        log(f"{tag}: {fmt_eps(s['eps'])} events/s, {s['ckpts']} checkpoints, "
                            f"p50 {fmt_ms(s['ckptP50'])}, peak RSS {fmt_rss(s['rss'])}")
                results[key] = {s: status.get(s) or runs[s] for s in systems}
                results[key]["events"] = events
    return results, loads


def tables(args, results):
    out = []
    out.append("### Throughput (events/s, excluding start-up; median of runs)\n")
    out.append("| query | events | p | checkpoints | streamjob | Flink hashmap | Flink RocksDB | "
               "streamjob/Flink hashmap | streamjob/Flink RocksDB | cores busy: streamjob / Flink hashmap | "
               "per core (events per CPU-second): streamjob / Flink hashmap | per core ratio |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (q, p, ck), row in results.items():
        c = {s: cell(row[s]) for s in SYSTEMS}
        cores = " / ".join(show(c[s], "cores", fmt_cores) for s in ("streamjob", "flink-hashmap"))
        per_core = " / ".join(show(c[s], "epcs", fmt_eps) for s in ("streamjob", "flink-hashmap"))
        out.append(f"| {q} | {row['events']:,} | {p} | {ckpt_label(ck)} | {show(c['streamjob'], 'eps', fmt_eps)} | "
                   f"{show(c['flink-hashmap'], 'eps', fmt_eps)} | {show(c['flink-rocksdb'], 'eps', fmt_eps)} | "
                   f"{ratio(c['streamjob'], c['flink-hashmap'])} | {ratio(c['streamjob'], c['flink-rocksdb'])} | "
                   f"{cores} | {per_core} | {ratio(c['streamjob'], c['flink-hashmap'], 'epcs')} |")
    out.append("\nCores busy = CPU time of the whole process (every thread: tasks, coordinator and uploads on "
               "ours; tasks, JIT compilers, garbage collector and the MiniCluster's own threads on Flink's) "
               "over the same span as the events/s figure; per core = events ÷ that CPU time.")
    out.append("\n### Checkpoints every 1 s (median over runs of each run's p50 / p99; size = p50 of a run)\n")
    out.append("| query | p | system | checkpoints/run | duration p50 | duration p99 | size p50 | throughput lost vs off |")
    out.append("|---|---|---|---|---|---|---|---|")
    for (q, p, ck), row in results.items():
        if ck is None:
            continue
        off = results.get((q, p, None))
        for s in (s for s in SYSTEMS + (S3_SYSTEM,) if s in row):
            c = cell(row[s])
            if isinstance(c, str):
                out.append(f"| {q} | {p} | {LABEL[s]} | {c} | | | | |")
                continue
            cost = "–"
            # Our S3 rows are set against our run without checkpoints (which stores nothing
            # periodically, wherever the snapshots would go).
            base = cell(off["streamjob" if s == S3_SYSTEM else s]) if off else None
            if s == "flink-rocksdb" and isinstance(base, str):
                base = None
            if isinstance(base, dict) and base.get("eps") and c.get("eps"):
                cost = fmt_cost(1 - c["eps"] / base["eps"])
            out.append(f"| {q} | {p} | {LABEL[s]} | {c['ckpts']:.0f} | {fmt_ms(c['ckptP50'])} | "
                       f"{fmt_ms(c['ckptP99'])} | {fmt_bytes(c['sizeP50'])} | {cost} |")
    s3_rows = [(k, row) for k, row in results.items() if S3_SYSTEM in row]
    if s3_rows:
        out.append("\n### streamjob with its snapshots in S3 (extra rows; medians of runs)\n")
        out.append("Same runs as above with `spec.storage.s3` pointing at an s3s-fs server on this machine "
                   "(S3 protocol over HTTP on localhost, objects written to the local disk by the server); "
                   "Flink has no S3 file system here, so its rows stay on a local folder.\n")
        out.append("| query | p | events/s, snapshots in S3 | events/s, local folder | S3 / local folder | "
                   "S3 / Flink hashmap (local folder) | checkpoint p50 / p99 in S3 | size p50 |")
        out.append("|---|---|---|---|---|---|---|---|")
        for (q, p, ck), row in s3_rows:
            c = {s: cell(row[s]) for s in SYSTEMS + (S3_SYSTEM,)}
            s3c = c[S3_SYSTEM]
            ckpt = "–" if isinstance(s3c, str) else f"{fmt_ms(s3c['ckptP50'])} / {fmt_ms(s3c['ckptP99'])}"
            size = "–" if isinstance(s3c, str) else fmt_bytes(s3c["sizeP50"])
            out.append(f"| {q} | {p} | {show(s3c, 'eps', fmt_eps)} | {show(c['streamjob'], 'eps', fmt_eps)} | "
                       f"{ratio(s3c, c['streamjob'])} | {ratio(s3c, c['flink-hashmap'])} | {ckpt} | {size} |")
    out.append("\n### Peak RSS (median of runs)\n")
    out.append("| query | p | checkpoints | streamjob | Flink hashmap | Flink RocksDB | streamjob/Flink hashmap |")
    out.append("|---|---|---|---|---|---|---|")
    for (q, p, ck), row in results.items():
        c = {s: cell(row[s]) for s in SYSTEMS}
        rss_ratio = "–"
        if all(isinstance(c[s], dict) and c[s].get("rss") for s in ("streamjob", "flink-hashmap")):
            rss_ratio = f"{c['streamjob']['rss'] / c['flink-hashmap']['rss']:.2f}×"
        out.append(f"| {q} | {p} | {ckpt_label(ck)} | {show(c['streamjob'], 'rss', fmt_rss)} | "
                   f"{show(c['flink-hashmap'], 'rss', fmt_rss)} | {show(c['flink-rocksdb'], 'rss', fmt_rss)} | "
                   f"{rss_ratio} |")
    return out


def measure_recovery(binary, kills, log):
    """Our recovery time after a killed worker, from tests/chaos/chaos.py's kill scenario (2 worker
    processes, parallelism 4, checkpoints every 200 ms, local folder): from the SIGKILL until the next
    attempt's worker 0 runs with its state restored. Returns a dict, or a string saying why not."""
    if not binary:
        return "no streamjob binary"
    out = pathlib.Path(tempfile.mkdtemp(prefix="bench-recovery-")) / "rows.json"
    cmd = [sys.executable, str(HERE.parent / "chaos" / "chaos.py"), "--scenarios", "kill", "--seed", "1",
           "--kills", str(kills), "--bin", binary, "--json", str(out)]
    log(f"recovery: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        row = json.loads(out.read_text())[0]
    except (OSError, ValueError, IndexError):
        return f"chaos run failed (exit {proc.returncode}): {proc.stdout[-300:]} {proc.stderr[-300:]}"
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    if not row.get("ok"):
        return f"chaos run failed: {row.get('error') or 'records lost or duplicated'}"
    return {"kills": row["injections"], "p50": row["recovery_p50"], "p99": row["recovery_p99"],
            "lost": row.get("lost"), "duplicated": row.get("duplicated")}


def targets(results, recovery=None):
    """Where we are against the issue's targets, computed from this run's figures."""
    out = ["### Against the targets (issue 7)\n"]
    one_s = [k for k in results if k[2] is not None]
    if all(isinstance(results[k]["streamjob"], str) for k in one_s):
        states = sorted({results[k]["streamjob"] for k in one_s})
        one_s = []
        out.append(f"- throughput ratios and our checkpoint cost: not measured (streamjob: {', '.join(states)})")
    for q, p, ck in one_s:
        row = results[(q, p, ck)]
        ours, flink = cell(row["streamjob"]), cell(row["flink-hashmap"])
        goal = 5 if q in SIMPLE else 3
        if isinstance(ours, dict) and isinstance(flink, dict) and ours.get("eps") and flink.get("eps"):
            per_core = ""
            if ours.get("epcs") and flink.get("epcs"):
                per_core = f", {ours['epcs'] / flink['epcs']:.2f}× per core (events per CPU-second)"
            out.append(f"- {q} p={p}, 1 s checkpoints: {ours['eps'] / flink['eps']:.2f}× Flink hashmap "
                       f"in events/s{per_core} (target ≥ {goal}× per core)")
        else:
            out.append(f"- {q} p={p}, 1 s checkpoints: not measured ({ours if isinstance(ours, str) else 'no figure'})")
        off = results.get((q, p, None))
        if off and isinstance(ours, dict):
            base = cell(off["streamjob"])
            if isinstance(base, dict) and base.get("eps") and ours.get("eps"):
                if (ours.get("ckpts") or 0) <= 1:
                    out.append("  - our throughput cost of 1 s checkpoints: not measured by this run (our runs end "
                               "before the first periodic checkpoint: only the final one ran; use more events)")
                else:
                    out.append(f"  - our throughput cost of 1 s checkpoints: {fmt_cost(1 - ours['eps'] / base['eps'])} "
                               "(target ≤ 3 %)")
    if isinstance(recovery, dict):
        out.append(f"- recovery after a killed worker (target ≤ 2 s in local mode): p50 {recovery['p50']:.2f} s, "
                   f"p99 {recovery['p99']:.2f} s over {recovery['kills']} SIGKILLs of a random worker of a 2-worker "
                   f"attempt (kill until the next attempt runs restored; lost {recovery['lost']}, duplicated "
                   f"{recovery['duplicated']}; tests/chaos/chaos.py; the operator-level figure is "
                   "tests/bench/operator.sh)")
    else:
        out.append(f"- recovery after a killed worker (target ≤ 2 s in local mode): not measured ({recovery})")
    return out


def charts(results, folder):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    written = []
    configs = sorted({(p, ck is not None) for (_, p, ck) in results})
    queries = list(dict.fromkeys(q for (q, _, _) in results))
    colors = {"streamjob": "#d95f02", "flink-hashmap": "#1b9e77", "flink-rocksdb": "#7570b3"}

    def grouped(metric, ylabel, title, name, log=True, only_ckpt=False):
        ps = sorted({p for p, _ in configs})
        cks = sorted({ck for _, ck in configs if ck or not only_ckpt})
        fig, axes = plt.subplots(len(ps), len(cks), figsize=(6 * len(cks), 3.6 * len(ps)), squeeze=False,
                                 sharey=True)
        positive = []
        for ax, (p, ck) in ((axes[i][j], (p, ck)) for i, p in enumerate(ps) for j, ck in enumerate(cks)):
            width = 0.27
            for i, s in enumerate(SYSTEMS):
                vals = []
                for q in queries:
                    row = results.get((q, p, 1000 if ck else None))
                    c = cell(row[s]) if row else None
                    vals.append((c.get(metric) or 0) if isinstance(c, dict) else 0)
                xs = [x + (i - 1) * width for x in range(len(queries))]
                ax.bar(xs, vals, width, label=LABEL[s], color=colors[s])
                positive += [v for v in vals if v > 0]
                for x, v in zip(xs, vals):
                    if v <= 0:
                        ax.annotate("n/a", (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                                    textcoords="offset points", ha="center", fontsize=7, rotation=90)
            ax.set_xticks(range(len(queries)))
            ax.set_xticklabels(queries)
            ax.set_title(f"p={p}, checkpoints {'every 1 s' if ck else 'off'}")
            ax.set_ylabel(ylabel)
            if log:
                ax.set_yscale("log")
                if positive:
                    ax.set_ylim(bottom=min(positive) / 3)
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    grouped("eps", "events/s (log)", "Nexmark throughput excluding start-up (median)", "throughput.png")
    grouped("ckptP50", "ms", "Checkpoint duration p50, checkpoints every 1 s (median)", "checkpoint-duration.png",
            log=False, only_ckpt=True)
    grouped("rss", "KiB", "Peak RSS (median)", "peak-rss.png", log=False)
    return written


def machine():
    cpu = "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def git_rev():
    try:
        return subprocess.run(["git", "-C", str(benchlib.REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke: small counts, 1 run, p=2, < 5 min")
    ap.add_argument("--runs", type=int, help="runs per configuration (default 3; quick: 1)")
    ap.add_argument("--queries", help="comma-separated (default q0,q1,q2,q5,q7,q8)")
    ap.add_argument("--parallelism", help="comma-separated (default 1,2; quick: 2)")
    ap.add_argument("--events-simple", type=int,
                    help="events for q0-q2 (default 200000000, so that our runs too span several 1 s "
                         "checkpoints; quick: 500000)")
    ap.add_argument("--events-windowed", type=int, help="events for q5/q7/q8 (default 2000000; quick: 300000)")
    ap.add_argument("--rocksdb-off", action="store_true",
                    help="also run Flink RocksDB without checkpoints (default: RocksDB only with 1 s checkpoints "
                         "in --quick, always in the full run)")
    ap.add_argument("--flink-file-sink", "--file-sinks", dest="flink_file_sink", action="store_true",
                    help="both sides write their results as lines to files (Flink: plain buffered writer, not "
                         "transactional; streamjob: its exactly-once file sink) instead of the default "
                         "discarding sinks")
    ap.add_argument("--no-s3", action="store_true",
                    help="skip the extra rows of our side with snapshots in S3 (an s3s-fs server: "
                         "$S3S_FS_BIN or tests/tools/install-s3s-fs.sh)")
    ap.add_argument("--bin", help="streamjob release binary (default: looked up, never built)")
    ap.add_argument("--out", default=str(HERE / "results"), help="results folder (default tests/bench/results)")
    ap.add_argument("--skip-check", action="store_true", help="skip the generator equality check")
    args = ap.parse_args()
    reexec_in_venv()
    benchlib.ensure_time()

    args.runs = args.runs or (1 if args.quick else 3)
    args.queries = (args.queries or ",".join(benchlib.QUERIES)).split(",")
    args.parallelism = [int(p) for p in (args.parallelism or ("2" if args.quick else "1,2")).split(",")]
    args.events_simple = args.events_simple or (500_000 if args.quick else 200_000_000)
    args.events_windowed = args.events_windowed or (300_000 if args.quick else 2_000_000)
    args.checkpoints = [None, 1000]
    if not args.quick:
        args.rocksdb_off = True
    unknown = [q for q in args.queries if q not in benchlib.QUERIES]
    if unknown:
        raise SystemExit(f"unknown queries {unknown}; queries: {' '.join(benchlib.QUERIES)}")

    folder = pathlib.Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    logfile = (folder / "latest.log").open("w")

    def log(msg):
        print(msg, flush=True)
        logfile.write(msg + "\n")
        logfile.flush()

    started = datetime.datetime.now(datetime.timezone.utc)
    flink_version = benchlib.build_flink()
    binary = benchlib.find_streamjob(args.bin)
    stats_json = bool(binary) and benchlib.supports_stats_json(binary)
    log(f"Flink {flink_version}; streamjob binary: {binary or 'none found (our side not run)'}"
        f"{'' if not binary else ' (--stats-json: ' + ('yes' if stats_json else 'no, wall clock') + ')'}")

    check = "skipped (--skip-check)"
    if not args.skip_check:
        import check_streams  # noqa: PLC0415

        try:
            ok, check = check_streams.check(5000, binary)
            check = ("passed: " if ok else "FAILED: ") + check
        except Exception:  # report it, the benchmark still runs
            check = "error: " + traceback.format_exc().strip().splitlines()[-1]
        log(f"generator equality check: {check}")

    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        s3 = None
        if binary and not args.no_s3:
            try:
                s3 = stack.enter_context(benchlib.S3Server())
                log(f"S3 rows: s3s-fs on 127.0.0.1:{s3.port}")
            except benchlib.RunFailed as e:
                log(f"S3 rows not run: {e}")
        results, loads = run_matrix(args, binary, stats_json, log, s3)
    recovery = measure_recovery(binary, 3 if args.quick else 10, log)
    log(f"recovery: {recovery}")
    load_after = os.getloadavg()
    finished = datetime.datetime.now(datetime.timezone.utc)

    pngs = charts(results, folder)
    command = "tests/bench/compare.py " + " ".join(sys.argv[1:])
    md = [f"# Nexmark: streamjob vs Apache Flink {flink_version}{' (quick mode)' if args.quick else ''}\n",
          f"- date: {started:%Y-%m-%d %H:%M} UTC, {int((finished - started).total_seconds() / 60)} min; "
          f"command: `{command.strip()}`",
          f"- machine: {machine()}; 1-min load average {load_before[0]:.1f} at the start, "
          f"median {median(loads) or 0:.1f} / max {max(loads, default=0):.1f} before the runs, "
          f"{load_after[0]:.1f} at the end (other work on the machine disturbs the figures: compare within a run)",
          f"- streamjob: {binary or 'no release binary found, our side not run (build one with cargo build --release)'}"
          f" at commit {git_rev()}; timing: "
          + ("--stats-json runMillis (excludes process start and restore)" if stats_json else
             "wall clock of the process, start-up included (this binary has no --stats-json)" if binary else "–"),
          f"- Flink {flink_version} from PyPI (apache-flink), Java {java_version()}, local MiniCluster in one JVM "
          "(default JVM heap), object reuse on, restart strategy none; checkpoints: exactly-once, aligned, "
          "full (not incremental), to a local file:// folder; timing: first source record to end of input at the "
          "last sink subtask; checkpoint figures from the MiniCluster REST API /jobs/<id>/checkpoints",
          f"- {args.runs} run(s) per configuration, interleaved; q0-q2 {args.events_simple:,} events, q5/q7/q8 "
          f"{args.events_windowed:,} events; same generator on both sides (16 splits, event i a pure function of i); "
          + ("Flink writes lines to files (buffered, not transactional), streamjob to its exactly-once file sink; "
             if args.flink_file_sink else
             "both sides write to a discarding sink (streamjob: sink=discard); ")
          + 
          "'checkpoints off' is no "
          "checkpointing on Flink and a 1 h interval on streamjob (only the final checkpoint of a bounded job)",
          f"- generator equality check: {check}\n"]
    md += tables(args, results)
    md.append("")
    md += targets(results, recovery)
    md.append("")
    md += [f"![{p.stem}]({p.name})" for p in pngs]
    text = "\n".join(md) + "\n"
    (folder / "latest.md").write_text(text)
    raw = {f"{q} p={p} checkpoints={ckpt_label(ck)}": v for (q, p, ck), v in results.items()}
    (folder / "latest.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    print("\n" + text)
    log(f"wrote {folder / 'latest.md'}, latest.json and {', '.join(p.name for p in pngs)}")


def java_version():
    out = subprocess.run(["java", "-version"], capture_output=True, text=True)
    first = (out.stderr or out.stdout).splitlines()
    return first[0].split('"')[1] if first and '"' in first[0] else "unknown"


if __name__ == "__main__":
    main()
