package mlfs.flink;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import java.io.Serializable;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.flink.api.common.typeutils.SimpleTypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.api.common.typeutils.TypeSerializerSnapshot;
import org.apache.flink.core.memory.DataInputView;
import org.apache.flink.core.memory.DataOutputView;
import org.apache.flink.types.StringValue;

/**
 * {@link ContinuousWindow}'s state of one key, written by MLFS instead of Kryo: Kryo walked every
 * field by reflection, and copied the whole state of each key the job touched while a checkpoint
 * was written (most of the checkpoints' cost). Values are written with a tag of their type; a copy
 * shares what the window never changes once made (keys, values, window entries) and copies the
 * containers it changes.
 */
public final class KeyStateSerializer extends TypeSerializer<ContinuousWindow.KeyState> {
    private static final long serialVersionUID = 1L;

    private static final byte NULL = 0;
    private static final byte LONG = 1;
    private static final byte INT = 2;
    private static final byte DOUBLE = 3;
    private static final byte STRING = 4;
    private static final byte BOOLEAN = 5;
    private static final byte BYTES = 6;
    private static final byte FLOAT = 7;
    private static final byte SHORT = 8;
    private static final byte BYTE = 9;
    private static final byte BYTES_KEY = 10;
    private static final byte JAVA = 11; // another Serializable value (a date, a decimal)
    private static final byte COUNTS = 20; // long[] of count and the integer sums
    private static final byte EXACT = 21;
    private static final byte DEQUE = 22; // min, max, latest, first: (seq, value) candidates
    private static final byte DISTINCT = 23;
    private static final byte FIFO = 24; // last_k

    @Override
    public boolean isImmutableType() {
        return false;
    }

    @Override
    public TypeSerializer<ContinuousWindow.KeyState> duplicate() {
        return this; // it holds nothing
    }

    @Override
    public ContinuousWindow.KeyState createInstance() {
        return new ContinuousWindow.KeyState();
    }

    @Override
    public ContinuousWindow.KeyState copy(ContinuousWindow.KeyState from) {
        ContinuousWindow.KeyState to = new ContinuousWindow.KeyState();
        to.keys = from.keys;
        for (Map.Entry<Long, List<Object[]>> at : from.pending.entrySet()) {
            to.pending.put(at.getKey(), new ArrayList<>(at.getValue()));
        }
        to.window = copyFifo(from.window);
        to.accs = new Object[from.accs.length];
        for (int i = 0; i < from.accs.length; i++) {
            to.accs[i] = copyAcc(from.accs[i]);
        }
        to.nextSeq = from.nextSeq;
        return to;
    }

    @Override
    public ContinuousWindow.KeyState copy(ContinuousWindow.KeyState from, ContinuousWindow.KeyState reuse) {
        return copy(from);
    }

    @Override
    public int getLength() {
        return -1;
    }

    @Override
    public void serialize(ContinuousWindow.KeyState state, DataOutputView out) throws IOException {
        writeValues(state.keys, out);
        out.writeInt(state.pending.size());
        for (Map.Entry<Long, List<Object[]>> at : state.pending.entrySet()) {
            out.writeLong(at.getKey());
            out.writeInt(at.getValue().size());
            for (Object[] values : at.getValue()) {
                writeValues(values, out);
            }
        }
        writeFifo(state.window, out);
        out.writeInt(state.accs.length);
        for (Object acc : state.accs) {
            writeAcc(acc, out);
        }
        out.writeLong(state.nextSeq);
    }

    @Override
    public ContinuousWindow.KeyState deserialize(DataInputView in) throws IOException {
        ContinuousWindow.KeyState state = new ContinuousWindow.KeyState();
        state.keys = readValues(in);
        for (int n = in.readInt(); n > 0; n--) {
            long time = in.readLong();
            int size = in.readInt();
            List<Object[]> at = new ArrayList<>(size);
            for (int i = 0; i < size; i++) {
                at.add(readValues(in));
            }
            state.pending.put(time, at);
        }
        state.window = readFifo(in);
        state.accs = new Object[in.readInt()];
        for (int i = 0; i < state.accs.length; i++) {
            state.accs[i] = readAcc(in);
        }
        state.nextSeq = in.readLong();
        return state;
    }

    @Override
    public ContinuousWindow.KeyState deserialize(ContinuousWindow.KeyState reuse, DataInputView in)
            throws IOException {
        return deserialize(in);
    }

    @Override
    public void copy(DataInputView in, DataOutputView out) throws IOException {
        serialize(deserialize(in), out);
    }

    @Override
    public boolean equals(Object other) {
        return other instanceof KeyStateSerializer;
    }

    @Override
    public int hashCode() {
        return KeyStateSerializer.class.hashCode();
    }

    @Override
    public TypeSerializerSnapshot<ContinuousWindow.KeyState> snapshotConfiguration() {
        return new Snapshot();
    }

    /** What a checkpoint records of the serializer: nothing but its class (it has no settings). */
    public static final class Snapshot extends SimpleTypeSerializerSnapshot<ContinuousWindow.KeyState> {
        public Snapshot() {
            super(KeyStateSerializer::new);
        }
    }

    private static ContinuousWindow.Fifo copyFifo(ContinuousWindow.Fifo from) {
        ContinuousWindow.Fifo to = new ContinuousWindow.Fifo();
        to.items = new ArrayList<>(from.items.subList(from.head, from.items.size()));
        return to;
    }

    @SuppressWarnings("unchecked")
    private static Object copyAcc(Object acc) {
        if (acc instanceof long[]) {
            return ((long[]) acc).clone();
        }
        if (acc instanceof ExactAcc) {
            ExactAcc from = (ExactAcc) acc;
            ExactAcc to = new ExactAcc();
            to.count = from.count;
            to.nans = from.nans;
            to.positiveInfinities = from.positiveInfinities;
            to.negativeInfinities = from.negativeInfinities;
            to.sum = from.sum; // replaced, never changed in place
            to.squares = from.squares;
            return to;
        }
        if (acc instanceof ArrayDeque) {
            return new ArrayDeque<>((ArrayDeque<Object[]>) acc);
        }
        if (acc instanceof HashMap) {
            return new HashMap<>((HashMap<Object, Integer>) acc);
        }
        if (acc instanceof ContinuousWindow.Fifo) {
            return copyFifo((ContinuousWindow.Fifo) acc);
        }
        throw new IllegalStateException("no copy for an accumulator of " + acc.getClass());
    }

    private static void writeFifo(ContinuousWindow.Fifo fifo, DataOutputView out) throws IOException {
        out.writeInt(fifo.size());
        for (int i = fifo.head; i < fifo.items.size(); i++) {
            ContinuousWindow.Entry entry = fifo.items.get(i);
            out.writeLong(entry.seq);
            out.writeLong(entry.time);
            writeValues(entry.values, out);
        }
    }

    private static ContinuousWindow.Fifo readFifo(DataInputView in) throws IOException {
        ContinuousWindow.Fifo fifo = new ContinuousWindow.Fifo();
        int size = in.readInt();
        fifo.items = new ArrayList<>(size);
        for (int i = 0; i < size; i++) {
            fifo.items.add(new ContinuousWindow.Entry(in.readLong(), in.readLong(), readValues(in)));
        }
        return fifo;
    }

    @SuppressWarnings("unchecked")
    private static void writeAcc(Object acc, DataOutputView out) throws IOException {
        if (acc instanceof long[]) {
            long[] longs = (long[]) acc;
            out.writeByte(COUNTS);
            out.writeInt(longs.length);
            for (long value : longs) {
                out.writeLong(value);
            }
        } else if (acc instanceof ExactAcc) {
            ExactAcc exact = (ExactAcc) acc;
            out.writeByte(EXACT);
            out.writeLong(exact.count);
            out.writeLong(exact.nans);
            out.writeLong(exact.positiveInfinities);
            out.writeLong(exact.negativeInfinities);
            writeValue(exact.sum, out);
            writeValue(exact.squares, out);
        } else if (acc instanceof ArrayDeque) {
            ArrayDeque<Object[]> deque = (ArrayDeque<Object[]>) acc;
            out.writeByte(DEQUE);
            out.writeInt(deque.size());
            for (Object[] candidate : deque) {
                out.writeLong((Long) candidate[0]);
                writeValue(candidate[1], out);
            }
        } else if (acc instanceof HashMap) {
            HashMap<Object, Integer> counts = (HashMap<Object, Integer>) acc;
            out.writeByte(DISTINCT);
            out.writeInt(counts.size());
            for (Map.Entry<Object, Integer> entry : counts.entrySet()) {
                writeValue(entry.getKey(), out);
                out.writeInt(entry.getValue());
            }
        } else if (acc instanceof ContinuousWindow.Fifo) {
            out.writeByte(FIFO);
            writeFifo((ContinuousWindow.Fifo) acc, out);
        } else {
            throw new IllegalStateException("no serializer for an accumulator of " + acc.getClass());
        }
    }

    private static Object readAcc(DataInputView in) throws IOException {
        byte tag = in.readByte();
        switch (tag) {
            case COUNTS:
                long[] longs = new long[in.readInt()];
                for (int i = 0; i < longs.length; i++) {
                    longs[i] = in.readLong();
                }
                return longs;
            case EXACT:
                ExactAcc exact = new ExactAcc();
                exact.count = in.readLong();
                exact.nans = in.readLong();
                exact.positiveInfinities = in.readLong();
                exact.negativeInfinities = in.readLong();
                exact.sum = (byte[]) readValue(in);
                exact.squares = (byte[]) readValue(in);
                return exact;
            case DEQUE:
                int size = in.readInt();
                ArrayDeque<Object[]> deque = new ArrayDeque<>(Math.max(size, 1));
                for (int i = 0; i < size; i++) {
                    long seq = in.readLong();
                    deque.addLast(new Object[] {seq, readValue(in)});
                }
                return deque;
            case DISTINCT:
                int distinct = in.readInt();
                HashMap<Object, Integer> counts = new HashMap<>();
                for (int i = 0; i < distinct; i++) {
                    Object key = readValue(in);
                    counts.put(key, in.readInt());
                }
                return counts;
            case FIFO:
                return readFifo(in);
            default:
                throw new IOException("unknown accumulator tag " + tag + " in a window's state");
        }
    }

    private static void writeValues(Object[] values, DataOutputView out) throws IOException {
        out.writeInt(values.length);
        for (Object value : values) {
            writeValue(value, out);
        }
    }

    private static Object[] readValues(DataInputView in) throws IOException {
        Object[] values = new Object[in.readInt()];
        for (int i = 0; i < values.length; i++) {
            values[i] = readValue(in);
        }
        return values;
    }

    static void writeValue(Object value, DataOutputView out) throws IOException {
        if (value == null) {
            out.writeByte(NULL);
        } else if (value instanceof Long) {
            out.writeByte(LONG);
            out.writeLong((Long) value);
        } else if (value instanceof Integer) {
            out.writeByte(INT);
            out.writeInt((Integer) value);
        } else if (value instanceof Double) {
            out.writeByte(DOUBLE);
            out.writeDouble((Double) value);
        } else if (value instanceof String) {
            out.writeByte(STRING);
            StringValue.writeString((String) value, out);
        } else if (value instanceof Boolean) {
            out.writeByte(BOOLEAN);
            out.writeBoolean((Boolean) value);
        } else if (value instanceof byte[]) {
            out.writeByte(BYTES);
            writeBytes((byte[]) value, out);
        } else if (value instanceof Float) {
            out.writeByte(FLOAT);
            out.writeFloat((Float) value);
        } else if (value instanceof Short) {
            out.writeByte(SHORT);
            out.writeShort((Short) value);
        } else if (value instanceof Byte) {
            out.writeByte(BYTE);
            out.writeByte((Byte) value);
        } else if (value instanceof Aggregates.Bytes) {
            out.writeByte(BYTES_KEY);
            writeBytes(((Aggregates.Bytes) value).bytes, out);
        } else if (value instanceof Serializable) {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream();
            try (ObjectOutputStream objects = new ObjectOutputStream(bytes)) {
                objects.writeObject(value);
            }
            out.writeByte(JAVA);
            writeBytes(bytes.toByteArray(), out);
        } else {
            throw new IllegalStateException("no serializer for a window value of " + value.getClass());
        }
    }

    static Object readValue(DataInputView in) throws IOException {
        byte tag = in.readByte();
        switch (tag) {
            case NULL:
                return null;
            case LONG:
                return in.readLong();
            case INT:
                return in.readInt();
            case DOUBLE:
                return in.readDouble();
            case STRING:
                return StringValue.readString(in);
            case BOOLEAN:
                return in.readBoolean();
            case BYTES:
                return readBytes(in);
            case FLOAT:
                return in.readFloat();
            case SHORT:
                return in.readShort();
            case BYTE:
                return in.readByte();
            case BYTES_KEY:
                return new Aggregates.Bytes(readBytes(in));
            case JAVA:
                try (ObjectInputStream objects = new ObjectInputStream(new ByteArrayInputStream(readBytes(in)))) {
                    return objects.readObject();
                } catch (ClassNotFoundException e) {
                    throw new IOException("a window value of a class not found: " + e.getMessage(), e);
                }
            default:
                throw new IOException("unknown value tag " + tag + " in a window's state");
        }
    }

    private static void writeBytes(byte[] bytes, DataOutputView out) throws IOException {
        out.writeInt(bytes.length);
        out.write(bytes);
    }

    private static byte[] readBytes(DataInputView in) throws IOException {
        byte[] bytes = new byte[in.readInt()];
        in.readFully(bytes);
        return bytes;
    }
}
