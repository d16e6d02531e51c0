package io.streamjob.bench;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;

import org.apache.flink.api.common.JobID;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.runtime.jobgraph.JobGraph;
import org.apache.flink.runtime.jobmaster.JobResult;
import org.apache.flink.runtime.minicluster.MiniCluster;
import org.apache.flink.runtime.minicluster.MiniClusterConfiguration;
import org.apache.flink.runtime.util.EnvironmentInformation;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ArrayNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

/**
 * The Flink peer of our Nexmark benchmark (issue 7): one Nexmark query, run in a local MiniCluster in
 * this JVM, over an exact port of our generator.
 *
 * <pre>
 * FlinkBench --query q0|q1|q2|q5|q7|q8 --events N [--parallelism P] [--splits S]
 *            [--checkpoint-interval off|MS] [--checkpoint-dir DIR] [--state-backend hashmap|rocksdb]
 *            [--incremental] [--watermarks source|bounded] [--out-of-orderness-ms MS]
 *            [--object-reuse true|false]
 *            [--output DIR] [--stats-json PATH]
 * FlinkBench --print-events N          (the first N events of the generator, one per line)
 * </pre>
 *
 * Watermarks: {@code source} (default) is our generator's (emitted by the reader after each batch of
 * 1024: smallest next event time over its live splits, minus one); {@code bounded} is Flink's
 * {@code forBoundedOutOfOrderness(--out-of-orderness-ms)}, emitted every 200 ms.
 * Without {@code --output} results go to a discarding sink. Prints one JSON object with the figures
 * (also written to {@code --stats-json}): sourceRecords, runMillis (first source record to the end of
 * input at the last sink subtask), checkpoints (id, durationMs = end-to-end duration, sizeBytes = state
 * size, checkpointedSizeBytes) read from the MiniCluster's REST API {@code /jobs/<id>/checkpoints}
 * after the job finished, before the cluster is closed.
 */
public final class FlinkBench {
    private FlinkBench() {}

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = parse(argv);
        if (args.containsKey("print-events")) {
            printEvents(Long.parseLong(args.get("print-events")));
            return;
        }
        String query = required(args, "query");
        long events = Long.parseLong(required(args, "events"));
        int parallelism = Integer.parseInt(args.getOrDefault("parallelism", "1"));
        // Our default: splits = max(parallelism, 16) (crates/worker/src/jobs.rs).
        int splits = Integer.parseInt(args.getOrDefault("splits", Integer.toString(Math.max(parallelism, 16))));
        String interval = args.getOrDefault("checkpoint-interval", "off");
        String backend = args.getOrDefault("state-backend", "hashmap");
        if (!backend.equals("hashmap") && !backend.equals("rocksdb")) {
            throw new IllegalArgumentException("--state-backend must be hashmap or rocksdb, not " + backend);
        }
        long outOfOrderness = Long.parseLong(args.getOrDefault("out-of-orderness-ms", "0"));
        String watermarks = args.getOrDefault("watermarks", "source");
        if (!watermarks.equals("source") && !watermarks.equals("bounded")) {
            throw new IllegalArgumentException("--watermarks must be source or bounded, not " + watermarks);
        }
        boolean sourceWatermarks = watermarks.equals("source");
        String output = args.get("output");

        Map<String, String> settings = new HashMap<>();
        settings.put("rest.bind-port", "0");
        settings.put("rest.address", "127.0.0.1");
        settings.put("rest.bind-address", "127.0.0.1");
        settings.put("parallelism.default", Integer.toString(parallelism));
        settings.put("taskmanager.numberOfTaskSlots", Integer.toString(parallelism));
        settings.put("state.backend.type", backend);
        settings.put("restart-strategy.type", "none");
        settings.put("pipeline.object-reuse", args.getOrDefault("object-reuse", "true"));
        settings.put("web.checkpoints.history", "100000");
        if (!interval.equals("off")) {
            String dir = args.get("checkpoint-dir");
            if (dir == null) dir = Files.createTempDirectory("flink-bench-checkpoints").toString();
            settings.put("execution.checkpointing.interval", Long.parseLong(interval) + " ms");
            settings.put("execution.checkpointing.dir", Paths.get(dir).toAbsolutePath().toUri().toString());
            settings.put("execution.checkpointing.incremental", Boolean.toString(args.containsKey("incremental")));
        }
        Configuration conf = Configuration.fromMap(settings);

        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(conf);
        env.setParallelism(parallelism);
        DataStream<Event> source = env.fromSource(
                new NexmarkSource(events, splits, sourceWatermarks),
                sourceWatermarks
                        ? WatermarkStrategy.<Event>noWatermarks()
                        : WatermarkStrategy.<Event>forBoundedOutOfOrderness(Duration.ofMillis(outOfOrderness)),
                "nexmark");
        DataStream<?> results;
        switch (query) {
            case "q0":
            case "q1":
            case "q2":
                results = Queries.simple(query, source);
                break;
            case "q5":
                results = Queries.q5(source);
                break;
            case "q7":
                results = Queries.q7(source);
                break;
            case "q8":
                results = Queries.q8(source);
                break;
            default:
                throw new IllegalArgumentException("unknown query " + query + "; queries: q0 q1 q2 q5 q7 q8");
        }
        sinkTo(results, output);

        long start = System.nanoTime();
        org.apache.flink.streaming.api.graph.StreamGraph graph = env.getStreamGraph();
        graph.setJobName("nexmark-" + query);
        JobGraph job = graph.getJobGraph();
        MiniClusterConfiguration mc = new MiniClusterConfiguration.Builder()
                .setConfiguration(conf)
                .setNumTaskManagers(1)
                .setNumSlotsPerTaskManager(parallelism)
                .build();
        ObjectNode stats;
        try (MiniCluster cluster = new MiniCluster(mc)) {
            cluster.start();
            JobID id = cluster.submitJob(job).get().getJobID();
            JobResult result = cluster.requestJobResult(id).get();
            long finished = System.nanoTime();
            if (!result.isSuccess()) {
                Throwable cause = result.getSerializedThrowable()
                        .map(t -> t.deserializeError(FlinkBench.class.getClassLoader()))
                        .orElse(null);
                throw new RuntimeException("the Flink job failed", cause);
            }
            stats = figures(cluster, id, result, start, finished);
        }
        stats.put("query", query);
        stats.put("events", events);
        stats.put("parallelism", parallelism);
        stats.put("splits", splits);
        stats.put("checkpointInterval", interval);
        stats.put("stateBackend", backend);
        stats.put("incremental", args.containsKey("incremental"));
        stats.put("watermarks", sourceWatermarks ? "source: min next event time over live splits - 1, per 1024 records"
                : "bounded out-of-orderness " + outOfOrderness + " ms");
        stats.put("objectReuse", Boolean.parseBoolean(settings.get("pipeline.object-reuse")));
        stats.put("sink", output == null ? "discarding" : "lines:" + output);
        String json = new ObjectMapper().writeValueAsString(stats);
        System.out.println(json);
        if (args.containsKey("stats-json")) {
            Files.write(Paths.get(args.get("stats-json")), (json + "\n").getBytes(StandardCharsets.UTF_8));
        }
        // Flink's non-daemon threads (RocksDB, netty) must not keep the process alive.
        System.exit(0);
    }

    @SuppressWarnings({"unchecked", "rawtypes"})
    private static void sinkTo(DataStream<?> results, String output) {
        Sink sink = output == null ? new BenchSinks.Discarding<>() : new BenchSinks.Lines<>(output, Queries::format);
        ((DataStream) results).sinkTo(sink).name(output == null ? "discarding-sink" : "line-sink");
    }

    private static ObjectNode figures(MiniCluster cluster, JobID id, JobResult result, long start, long finished)
            throws Exception {
        ObjectMapper json = new ObjectMapper();
        ObjectNode stats = json.createObjectNode();
        long first = BenchStats.firstRecordNanos();
        long end = BenchStats.lastSinkEndNanos();
        if (first == Long.MAX_VALUE || end == Long.MIN_VALUE) {
            throw new IllegalStateException("no timing recorded: the tasks did not report to BenchStats");
        }
        stats.put("engine", "flink");
        stats.put("flinkVersion", EnvironmentInformation.getVersion());
        stats.put("sourceRecords", BenchStats.sourceRecords());
        stats.put("sinkRecords", BenchStats.sinkRecords());
        stats.put("runMillis", (end - first) / 1e6);
        stats.put("runMillisHow", "first source record to end of input at the last sink subtask");
        if (BenchStats.runCpuNanos() >= 0) {
            stats.put("cpuMillis", BenchStats.runCpuNanos() / 1e6);
        }
        stats.put("startupMillis", (first - start) / 1e6);
        stats.put("toJobEndMillis", (finished - first) / 1e6);
        stats.put("jobNetRuntimeMillis", result.getNetRuntime());
        stats.put("restarts", 0);

        URI rest = cluster.getRestAddress().get();
        HttpClient http = HttpClient.newHttpClient();
        HttpResponse<String> reply = http.send(
                HttpRequest.newBuilder(rest.resolve("/jobs/" + id + "/checkpoints")).GET().build(),
                HttpResponse.BodyHandlers.ofString());
        ArrayNode checkpoints = stats.putArray("checkpoints");
        if (reply.statusCode() != 200) {
            stats.put("checkpointStats", "unavailable: REST " + reply.statusCode() + " " + reply.body());
            return stats;
        }
        stats.put("checkpointStats", "MiniCluster REST /jobs/<id>/checkpoints");
        JsonNode body = json.readTree(reply.body());
        stats.set("checkpointCounts", body.path("counts"));
        for (JsonNode c : body.path("history")) {
            if (!"COMPLETED".equals(c.path("status").asText()) || c.path("is_savepoint").asBoolean()) continue;
            ObjectNode row = checkpoints.addObject();
            row.put("id", c.path("id").asLong());
            row.put("durationMs", c.path("end_to_end_duration").asLong());
            row.put("sizeBytes", c.path("state_size").asLong());
            row.put("checkpointedSizeBytes", c.path("checkpointed_size").asLong());
        }
        return stats;
    }

    private static void printEvents(long n) {
        NexmarkGenerator g = new NexmarkGenerator();
        StringBuilder out = new StringBuilder();
        for (long i = 0; i < n; i++) {
            out.append(g.event(i)).append('\n');
            if (out.length() > 1 << 16) {
                System.out.print(out);
                out.setLength(0);
            }
        }
        System.out.print(out);
        System.out.flush();
    }

    private static Map<String, String> parse(String[] argv) {
        Map<String, String> args = new HashMap<>();
        for (int i = 0; i < argv.length; i++) {
            String a = argv[i];
            if (!a.startsWith("--")) throw new IllegalArgumentException("unexpected argument " + a);
            String key = a.substring(2);
            if (key.equals("incremental")) {
                args.put(key, "true");
            } else {
                if (i + 1 >= argv.length) throw new IllegalArgumentException(a + " needs a value");
                args.put(key, argv[++i]);
            }
        }
        return args;
    }

    private static String required(Map<String, String> args, String key) {
        String v = args.get(key);
        if (v == null) throw new IllegalArgumentException("--" + key + " is required");
        return v;
    }
}
