package mlfs.flink;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Stage 2 of a continuous or lifetime window in time linear in a key's events: the rows of one key
 * and time enter the window when the watermark passes that time (an event-time timer), the rows
 * older than the frame leave it in time order, and one row (keys, time, results) is emitted per
 * key and time. Each aggregate is updated by the rows that enter and leave, so the cost per row
 * does not grow with the rows a key holds in its window, where Flink's bounded {@code OVER}
 * revisits them. It gives what {@code flink_sql.stage2_sql}'s {@code OVER} query gives, one row
 * per key and time, with the same result types (MLFS's exact sums, means and variances; the
 * ordered texts of latest, first and last_k; strings ordered by UTF-8 bytes).
 *
 * <p>The plan comes as one spec string from Python ({@code flink_window.window_spec}):
 * {@code keys=<i,...>;ts=<i>;low=<ms or none>;features=<kind>:<i>,...}, where the indexes are
 * fields of the prepared rows and {@code low} the frame's start relative to its end (a row at
 * {@code t} is in the window of {@code T} when {@code T + low <= t <= T}).
 */
public class ContinuousWindow extends KeyedProcessFunction<String, Row, Row> {
    private static final long serialVersionUID = 1L;

    private final String spec;
    private transient int[] keyFields;
    private transient int tsField;
    private transient Long low; // null: a lifetime window, nothing leaves
    private transient String[] kinds;
    private transient int[] inputs;
    private transient ValueState<KeyState> state;

    public ContinuousWindow(String spec) {
        this.spec = spec;
        parse();
    }

    static Map<String, String> parts(String spec) {
        Map<String, String> parts = new HashMap<>();
        for (String part : spec.split(";")) {
            int eq = part.indexOf('=');
            parts.put(part.substring(0, eq), part.substring(eq + 1));
        }
        return parts;
    }

    private void parse() {
        Map<String, String> parts = parts(spec);
        keyFields = ints(parts.get("keys"));
        tsField = Integer.parseInt(parts.get("ts"));
        low = "none".equals(parts.get("low")) ? null : Long.valueOf(parts.get("low"));
        String features = parts.get("features");
        String[] items = features.isEmpty() ? new String[0] : features.split(",");
        kinds = new String[items.length];
        inputs = new int[items.length];
        for (int i = 0; i < items.length; i++) {
            int colon = items[i].lastIndexOf(':');
            kinds[i] = items[i].substring(0, colon);
            inputs[i] = Integer.parseInt(items[i].substring(colon + 1));
        }
    }

    static int[] ints(String text) {
        return Arrays.stream(text.split(",")).mapToInt(Integer::parseInt).toArray();
    }

    @Override
    public void open(OpenContext context) {
        parse();
        state = getRuntimeContext().getState(new ValueStateDescriptor<>("window", new KeyStateSerializer()));
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<Row> out) throws Exception {
        KeyState key = state.value();
        if (key == null) {
            key = new KeyState();
            key.keys = new Object[keyFields.length];
            for (int i = 0; i < keyFields.length; i++) {
                key.keys[i] = row.getField(keyFields[i]);
            }
            key.accs = new Object[kinds.length];
            for (int i = 0; i < kinds.length; i++) {
                key.accs[i] = Aggregates.create(kinds[i]);
            }
        }
        long t = ((Number) row.getField(tsField)).longValue();
        Object[] values = new Object[kinds.length];
        boolean any = false;
        for (int i = 0; i < kinds.length; i++) {
            values[i] = row.getField(inputs[i]);
            any |= values[i] != null;
        }
        List<Object[]> at = key.pending.get(t);
        if (at == null) {
            at = new ArrayList<>(1);
            key.pending.put(t, at);
            ctx.timerService().registerEventTimeTimer(t);
        }
        if (any) { // a leave marker (no value) only asks for the row at its time
            at.add(values);
        }
        state.update(key);
    }

    @Override
    public void onTimer(long time, OnTimerContext ctx, Collector<Row> out) throws Exception {
        KeyState key = state.value();
        List<Object[]> entering = key.pending.remove(time);
        if (entering != null) {
            for (Object[] values : entering) {
                long seq = key.nextSeq++;
                if (low != null) { // a lifetime window's rows never leave: no need to hold them
                    key.window.add(new Entry(seq, time, values));
                }
                for (int i = 0; i < kinds.length; i++) {
                    Aggregates.add(kinds[i], key.accs[i], seq, time, values[i]);
                }
            }
        }
        if (low != null) {
            while (!key.window.isEmpty() && key.window.first().time < time + low) {
                Entry leaving = key.window.removeFirst();
                for (int i = 0; i < kinds.length; i++) {
                    Aggregates.remove(kinds[i], key.accs[i], leaving.seq, leaving.time, leaving.values[i]);
                }
            }
        } else {
            for (int i = 0; i < kinds.length; i++) {
                Aggregates.keepNewest(kinds[i], key.accs[i]);
            }
        }
        Object[] fields = new Object[keyFields.length + 1 + kinds.length];
        System.arraycopy(key.keys, 0, fields, 0, keyFields.length);
        fields[keyFields.length] = time;
        for (int i = 0; i < kinds.length; i++) {
            fields[keyFields.length + 1 + i] = Aggregates.result(kinds[i], key.accs[i]);
        }
        out.collect(Row.of(fields));
        if (key.window.isEmpty() && key.pending.isEmpty() && low != null) {
            state.clear(); // nothing left in the window: a key that comes back starts afresh
        } else {
            state.update(key);
        }
    }

    /** One key's state: its key values, the rows waiting for the watermark, the window, the aggregates. */
    public static class KeyState {
        public Object[] keys;
        public TreeMap<Long, List<Object[]>> pending = new TreeMap<>();
        public Fifo window = new Fifo();
        public Object[] accs;
        public long nextSeq;

        public KeyState() {}
    }

    /** A row in the window: its order of entry, time and input values. */
    public static class Entry {
        public long seq;
        public long time;
        public Object[] values;

        public Entry() {}

        Entry(long seq, long time, Object[] values) {
            this.seq = seq;
            this.time = time;
            this.values = values;
        }
    }

    /** Rows in time order (the window's, or a last_k's values): added at the end, removed from the front. */
    public static class Fifo {
        public ArrayList<Entry> items = new ArrayList<>();
        public int head;

        public Fifo() {}

        void add(Entry entry) {
            items.add(entry);
        }

        boolean isEmpty() {
            return head == items.size();
        }

        int size() {
            return items.size() - head;
        }

        Entry first() {
            return items.get(head);
        }

        /** The {@code i}-th newest row (0: the newest). */
        Entry fromEnd(int i) {
            return items.get(items.size() - 1 - i);
        }

        Entry removeFirst() {
            Entry entry = items.get(head);
            items.set(head++, null);
            if (head > 64 && head * 2 > items.size()) {
                items = new ArrayList<>(items.subList(head, items.size()));
                head = 0;
            }
            return entry;
        }

        /**
         * Drops the oldest rows while more than {@code k} remain and the oldest is older than the
         * {@code k}-th newest (rows tied with it may still be among the last k by value).
         */
        void keepNewest(int k) {
            while (size() > k && first().time < fromEnd(k - 1).time) {
                removeFirst();
            }
        }
    }
}
