package io.streamjob.bench;

import java.io.BufferedWriter;
import java.io.IOException;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;

import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;

/** The two sinks of the benchmark job. */
public final class BenchSinks {
    private BenchSinks() {}

    /** Formats a record as one output line. */
    public interface LineFormat<T> extends Serializable {
        String line(T record);
    }

    /**
     * Discards every record (as Flink's {@code DiscardingSink}), counting them and reporting the end
     * of input to {@link BenchStats}. Used for the throughput rows.
     */
    public static final class Discarding<T> implements Sink<T> {
        @Override
        public SinkWriter<T> createWriter(WriterInitContext context) {
            return new SinkWriter<T>() {
                private long records;
                private boolean ended;

                @Override
                public void write(T element, Context ctx) {
                    records++;
                }

                @Override
                public void flush(boolean endOfInput) {
                    if (endOfInput && !ended) {
                        ended = true;
                        BenchStats.sinkFinished(records);
                    }
                }

                @Override
                public void close() {}
            };
        }
    }

    /**
     * Writes one line per record to {@code DIR/part-<subtask>} (plain buffered file, not
     * transactional: for comparing outputs, not for throughput rows).
     */
    public static final class Lines<T> implements Sink<T> {
        private final String dir;
        private final LineFormat<T> format;

        public Lines(String dir, LineFormat<T> format) {
            this.dir = dir;
            this.format = format;
        }

        @Override
        public SinkWriter<T> createWriter(WriterInitContext context) throws IOException {
            Path folder = Paths.get(dir);
            Files.createDirectories(folder);
            int subtask = context.getTaskInfo().getIndexOfThisSubtask();
            BufferedWriter out = Files.newBufferedWriter(
                    folder.resolve("part-" + subtask), StandardCharsets.UTF_8);
            return new SinkWriter<T>() {
                private long records;
                private boolean ended;

                @Override
                public void write(T element, Context ctx) throws IOException {
                    out.write(format.line(element));
                    out.write('\n');
                    records++;
                }

                @Override
                public void flush(boolean endOfInput) throws IOException {
                    out.flush();
                    if (endOfInput && !ended) {
                        ended = true;
                        BenchStats.sinkFinished(records);
                    }
                }

                @Override
                public void close() throws IOException {
                    out.close();
                }
            };
        }
    }
}
