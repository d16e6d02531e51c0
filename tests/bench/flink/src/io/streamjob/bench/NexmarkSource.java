package io.streamjob.bench;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.connector.source.Boundedness;
import org.apache.flink.api.connector.source.ReaderOutput;
import org.apache.flink.api.connector.source.Source;
import org.apache.flink.api.connector.source.SourceReader;
import org.apache.flink.api.connector.source.SourceReaderContext;
import org.apache.flink.api.connector.source.SplitEnumerator;
import org.apache.flink.api.connector.source.SplitEnumeratorContext;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.core.io.InputStatus;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/**
 * The Nexmark source as a Flink (FLIP-27) source, a port of {@code NexmarkSource} + {@code SplitReader}
 * (crates/engine/src/connectors/{nexmark,generator}.rs): {@code total} events in {@code splits}
 * interleaved splits; subtask j of p reads the splits k with k % p == j (our fresh-start assignment),
 * round-robin over its splits in split order, one event per {@code pollNext} (as Flink's own
 * generator sources do). Our reader restarts each batch of {@code batch_size} (1024, the JobConfig
 * default) at its first split; this one does the same, so both emit each subtask's events in the same
 * order (with 16 splits at parallelism 1 or 2 that is global index order). Each record carries its
 * event time ({@code date_time}). With {@code sourceWatermarks} the reader emits our watermark after
 * each batch: the smallest next event time over its live splits, minus one (use it with
 * {@code WatermarkStrategy.noWatermarks()}); otherwise watermarks come from the strategy given to
 * {@code fromSource}.
 */
public final class NexmarkSource
        implements Source<Event, GeneratorSplit, List<GeneratorSplit>>, ResultTypeQueryable<Event> {
    private final long total;
    private final int splits;
    private final boolean sourceWatermarks;

    public NexmarkSource(long total, int splits, boolean sourceWatermarks) {
        this.total = total;
        this.splits = splits;
        this.sourceWatermarks = sourceWatermarks;
    }

    @Override
    public Boundedness getBoundedness() {
        return total > 0 ? Boundedness.BOUNDED : Boundedness.CONTINUOUS_UNBOUNDED;
    }

    @Override
    public TypeInformation<Event> getProducedType() {
        return TypeInformation.of(Event.class);
    }

    @Override
    public SplitEnumerator<GeneratorSplit, List<GeneratorSplit>> createEnumerator(
            SplitEnumeratorContext<GeneratorSplit> context) {
        List<GeneratorSplit> all = new ArrayList<>();
        for (int k = 0; k < splits; k++) all.add(new GeneratorSplit(k, splits, 0));
        return new Enumerator(context, all);
    }

    @Override
    public SplitEnumerator<GeneratorSplit, List<GeneratorSplit>> restoreEnumerator(
            SplitEnumeratorContext<GeneratorSplit> context, List<GeneratorSplit> unassigned) {
        return new Enumerator(context, unassigned);
    }

    @Override
    public SimpleVersionedSerializer<GeneratorSplit> getSplitSerializer() {
        return new GeneratorSplit.Serializer();
    }

    @Override
    public SimpleVersionedSerializer<List<GeneratorSplit>> getEnumeratorCheckpointSerializer() {
        return new GeneratorSplit.ListSerializer();
    }

    @Override
    public SourceReader<Event, GeneratorSplit> createReader(SourceReaderContext context) {
        return new Reader(total, sourceWatermarks);
    }

    /** Hands each registering reader its splits (k % parallelism == subtask), then no more. */
    static final class Enumerator implements SplitEnumerator<GeneratorSplit, List<GeneratorSplit>> {
        private final SplitEnumeratorContext<GeneratorSplit> context;
        private final List<GeneratorSplit> unassigned;

        Enumerator(SplitEnumeratorContext<GeneratorSplit> context, List<GeneratorSplit> unassigned) {
            this.context = context;
            this.unassigned = new ArrayList<>(unassigned);
        }

        @Override
        public void start() {}

        @Override
        public void handleSplitRequest(int subtask, String host) {}

        @Override
        public void addSplitsBack(List<GeneratorSplit> back, int subtask) {
            unassigned.addAll(back);
        }

        @Override
        public void addReader(int subtask) {
            int p = Math.max(1, context.currentParallelism());
            Map<Integer, List<GeneratorSplit>> mine = new HashMap<>();
            List<GeneratorSplit> keep = new ArrayList<>();
            for (GeneratorSplit s : unassigned) {
                if (s.split % p == subtask) {
                    mine.computeIfAbsent(subtask, k -> new ArrayList<>()).add(s);
                } else {
                    keep.add(s);
                }
            }
            unassigned.clear();
            unassigned.addAll(keep);
            for (Map.Entry<Integer, List<GeneratorSplit>> e : mine.entrySet()) {
                for (GeneratorSplit s : e.getValue()) context.assignSplit(s, e.getKey());
            }
            context.signalNoMoreSplits(subtask);
        }

        @Override
        public List<GeneratorSplit> snapshotState(long checkpointId) {
            return new ArrayList<>(unassigned);
        }

        @Override
        public void close() {}
    }

    /** Round-robin over this subtask's splits, in split order, as {@code SplitReader::poll}. */
    static final class Reader implements SourceReader<Event, GeneratorSplit> {
        /** {@code JobConfig::batch_size} default: records per {@code SourceFunction::poll}. */
        static final int BATCH = 1024;
        private final long total;
        private final boolean sourceWatermarks;
        private final NexmarkGenerator generator = new NexmarkGenerator();
        private int[] split = new int[0];
        private int[] splitCount = new int[0];
        private long[] next = new long[0];
        private int cursor;
        private int inBatch;
        private boolean noMoreSplits;
        private boolean started;
        private long emitted;
        private CompletableFuture<Void> available = new CompletableFuture<>();

        Reader(long total, boolean sourceWatermarks) {
            this.total = total;
            this.sourceWatermarks = sourceWatermarks;
        }

        /** After a batch, as SplitReader::poll: smallest next event time over live splits, minus one. */
        private void emitWatermark(ReaderOutput<Event> output) {
            long min = Long.MAX_VALUE;
            for (int i = 0; i < split.length; i++) {
                if (live(i)) {
                    min = Math.min(min, generator.timeOf((long) split[i] + (long) splitCount[i] * next[i]));
                }
            }
            if (min != Long.MAX_VALUE) output.emitWatermark(new Watermark(min - 1));
        }

        @Override
        public void start() {}

        private boolean live(int i) {
            return total <= 0 || (long) split[i] + (long) splitCount[i] * next[i] < total;
        }

        @Override
        public InputStatus pollNext(ReaderOutput<Event> output) {
            int n = split.length;
            for (int tried = 0; tried < n; tried++) {
                int i = cursor;
                cursor = cursor + 1 == n ? 0 : cursor + 1;
                if (!live(i)) continue;
                long index = (long) split[i] + (long) splitCount[i] * next[i];
                next[i]++;
                if (!started) {
                    started = true;
                    BenchStats.sourceStarted();
                }
                Event e = generator.event(index);
                output.collect(e, e.timestamp());
                emitted++;
                if (++inBatch == BATCH) {
                    inBatch = 0;
                    cursor = 0;
                    if (sourceWatermarks) emitWatermark(output);
                }
                return InputStatus.MORE_AVAILABLE;
            }
            // A poll of ours also ends when no split is live (then the end of input brings the final
            // watermark).
            inBatch = 0;
            cursor = 0;
            if (noMoreSplits) {
                BenchStats.sourceFinished(emitted);
                emitted = 0;
                return InputStatus.END_OF_INPUT;
            }
            if (available.isDone()) available = new CompletableFuture<>();
            return InputStatus.NOTHING_AVAILABLE;
        }

        @Override
        public List<GeneratorSplit> snapshotState(long checkpointId) {
            List<GeneratorSplit> out = new ArrayList<>(split.length);
            for (int i = 0; i < split.length; i++) {
                out.add(new GeneratorSplit(split[i], splitCount[i], next[i]));
            }
            return out;
        }

        @Override
        public CompletableFuture<Void> isAvailable() {
            return available;
        }

        @Override
        public void addSplits(List<GeneratorSplit> added) {
            List<GeneratorSplit> all = new ArrayList<>(snapshotState(-1));
            all.addAll(added);
            all.sort(Comparator.comparingInt(s -> s.split));
            split = new int[all.size()];
            splitCount = new int[all.size()];
            next = new long[all.size()];
            for (int i = 0; i < all.size(); i++) {
                split[i] = all.get(i).split;
                splitCount[i] = all.get(i).splits;
                next[i] = all.get(i).next;
            }
            cursor = 0;
            inBatch = 0;
            available.complete(null);
        }

        @Override
        public void notifyNoMoreSplits() {
            noMoreSplits = true;
            available.complete(null);
        }

        @Override
        public void close() {}
    }
}
