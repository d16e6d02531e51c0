package io.streamjob.bench;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.connector.source.SourceSplit;
import org.apache.flink.core.io.SimpleVersionedSerializer;

/**
 * One generator split, as {@code SplitPosition} in crates/engine/src/connectors/generator.rs: split
 * {@code k} of {@code S} holds the global indices k, k+S, k+2S, ...; {@code next} is the next position
 * within the split (global index = split + splits * next).
 */
public final class GeneratorSplit implements SourceSplit {
    public final int split;
    public final int splits;
    public final long next;

    public GeneratorSplit(int split, int splits, long next) {
        this.split = split;
        this.splits = splits;
        this.next = next;
    }

    @Override
    public String splitId() {
        return Integer.toString(split);
    }

    /** Serializer of one split (checkpointed reader state). */
    public static final class Serializer implements SimpleVersionedSerializer<GeneratorSplit> {
        @Override
        public int getVersion() {
            return 1;
        }

        @Override
        public byte[] serialize(GeneratorSplit s) throws IOException {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream(16);
            DataOutputStream out = new DataOutputStream(bytes);
            out.writeInt(s.split);
            out.writeInt(s.splits);
            out.writeLong(s.next);
            return bytes.toByteArray();
        }

        @Override
        public GeneratorSplit deserialize(int version, byte[] data) throws IOException {
            DataInputStream in = new DataInputStream(new ByteArrayInputStream(data));
            return new GeneratorSplit(in.readInt(), in.readInt(), in.readLong());
        }
    }

    /** Serializer of the enumerator state: the splits not yet assigned. */
    public static final class ListSerializer implements SimpleVersionedSerializer<List<GeneratorSplit>> {
        @Override
        public int getVersion() {
            return 1;
        }

        @Override
        public byte[] serialize(List<GeneratorSplit> splits) throws IOException {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream();
            DataOutputStream out = new DataOutputStream(bytes);
            out.writeInt(splits.size());
            for (GeneratorSplit s : splits) {
                out.writeInt(s.split);
                out.writeInt(s.splits);
                out.writeLong(s.next);
            }
            return bytes.toByteArray();
        }

        @Override
        public List<GeneratorSplit> deserialize(int version, byte[] data) throws IOException {
            DataInputStream in = new DataInputStream(new ByteArrayInputStream(data));
            int n = in.readInt();
            List<GeneratorSplit> splits = new ArrayList<>(n);
            for (int i = 0; i < n; i++) {
                splits.add(new GeneratorSplit(in.readInt(), in.readInt(), in.readLong()));
            }
            return splits;
        }
    }
}
