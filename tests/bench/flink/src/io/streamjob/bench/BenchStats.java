package io.streamjob.bench;

import java.util.concurrent.atomic.AtomicLong;

/**
 * Process-wide timing of one run. The MiniCluster runs every task in this JVM (and, with no user jars,
 * loads our classes through the application class loader), so sources and sinks report here directly.
 *
 * <p>Run time = from the first record emitted by any source subtask to the end of input reaching the
 * last sink subtask (its {@code flush(endOfInput=true)}): MiniCluster start, job submission, task
 * deployment and the wait for the final checkpoint after the end of input are excluded.
 */
public final class BenchStats {
    private static final AtomicLong FIRST_RECORD_NANOS = new AtomicLong(Long.MAX_VALUE);
    private static final AtomicLong LAST_SINK_END_NANOS = new AtomicLong(Long.MIN_VALUE);
    private static final AtomicLong SOURCE_RECORDS = new AtomicLong();
    private static final AtomicLong SINK_RECORDS = new AtomicLong();

    private BenchStats() {}

    static void sourceStarted() {
        long now = System.nanoTime();
        FIRST_RECORD_NANOS.accumulateAndGet(now, Math::min);
    }

    static void sourceFinished(long records) {
        SOURCE_RECORDS.addAndGet(records);
    }

    static void sinkFinished(long records) {
        long now = System.nanoTime();
        SINK_RECORDS.addAndGet(records);
        LAST_SINK_END_NANOS.accumulateAndGet(now, Math::max);
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
