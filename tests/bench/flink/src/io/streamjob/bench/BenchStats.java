package io.streamjob.bench;

import java.lang.management.ManagementFactory;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Process-wide timing of one run. The MiniCluster runs every task in this JVM (and, with no user jars,
 * loads our classes through the application class loader), so sources and sinks report here directly.
 *
 * <p>Run time = from the first record emitted by any source subtask to the end of input reaching the
 * last sink subtask (its {@code flush(endOfInput=true)}): MiniCluster start, job submission, task
 * deployment and the wait for the final checkpoint after the end of input are excluded. The JVM's CPU
 * time (every thread: tasks, JIT compilers, garbage collector, the MiniCluster's own) is read at the
 * same two points, for CPU per event.
 */
public final class BenchStats {
    private static final AtomicLong FIRST_RECORD_NANOS = new AtomicLong(Long.MAX_VALUE);
    private static final AtomicLong LAST_SINK_END_NANOS = new AtomicLong(Long.MIN_VALUE);
    private static final AtomicLong SOURCE_RECORDS = new AtomicLong();
    private static final AtomicLong SINK_RECORDS = new AtomicLong();
    private static final AtomicLong FIRST_RECORD_CPU_NANOS = new AtomicLong(Long.MAX_VALUE);
    private static final AtomicLong LAST_SINK_END_CPU_NANOS = new AtomicLong(-1);

    private BenchStats() {}

    /** CPU time of this JVM so far (ns), or -1 where the platform does not report it. */
    static long processCpuNanos() {
        if (ManagementFactory.getOperatingSystemMXBean() instanceof com.sun.management.OperatingSystemMXBean os) {
            return os.getProcessCpuTime();
        }
        return -1;
    }

    static void sourceStarted() {
        long cpu = processCpuNanos();
        long now = System.nanoTime();
        FIRST_RECORD_NANOS.accumulateAndGet(now, Math::min);
        if (cpu >= 0) {
            FIRST_RECORD_CPU_NANOS.accumulateAndGet(cpu, Math::min);
        }
    }

    static void sourceFinished(long records) {
        SOURCE_RECORDS.addAndGet(records);
    }

    static void sinkFinished(long records) {
        long now = System.nanoTime();
        long cpu = processCpuNanos();
        SINK_RECORDS.addAndGet(records);
        LAST_SINK_END_NANOS.accumulateAndGet(now, Math::max);
        LAST_SINK_END_CPU_NANOS.accumulateAndGet(cpu, Math::max);
    }

    /** CPU time the JVM used from the first source record to the last sink's end of input, or -1. */
    public static long runCpuNanos() {
        long from = FIRST_RECORD_CPU_NANOS.get();
        long to = LAST_SINK_END_CPU_NANOS.get();
        return from == Long.MAX_VALUE || to < 0 ? -1 : Math.max(0, to - from);
    }

    public static long firstRecordNanos() {
        return FIRST_RECORD_NANOS.get();
    }

    public static long lastSinkEndNanos() {
        return LAST_SINK_END_NANOS.get();
    }

    public static long sourceRecords() {
        return SOURCE_RECORDS.get();
    }

    public static long sinkRecords() {
        return SINK_RECORDS.get();
    }
}
