package mlfs.flink;

import java.nio.charset.StandardCharsets;
import java.time.DateTimeException;
import java.time.LocalDate;
import java.time.LocalTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.runtime.state.FunctionInitializationContext;
import org.apache.flink.runtime.state.FunctionSnapshotContext;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.checkpoint.CheckpointedFunction;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Stage 1 in the JVM for the declarative views of one source partition (no event transform, or a
 * {@code Select}; {@code flink_stage1.jvm_spec}): each JSON event is decoded once, timed, and for
 * each view transformed, keyed and typed exactly as {@code EventPreparer} would, into the columns
 * of {@code flink_stage1.prepare_result_type}. Only events it can decide exactly are decided here:
 * every field the views read present once with a plain JSON scalar, a time in the canonical forms
 * below, and values that need no Python rule this code does not state. Every other event (most
 * of them future dead letters) is passed on with {@code _py} set, for the Python row path.
 *
 * <p>Output: {@code _raw}, {@code _seq} (the event's 1-based position in the partition, kept in
 * operator state), {@code _part}, {@code _py}, then {@code prepare}'s fields (null where
 * {@code _py}).
 */
public class JsonPrepare extends ProcessFunction<String, Row> implements CheckpointedFunction {
    private static final long serialVersionUID = 1L;

    static final int ROW = 0;
    static final int HEARTBEAT = 5;
    static final int OK = 0;
    static final int FILTERED = 1;
    private static final long SECONDS_THRESHOLD = 100_000_000_000L;
    private static final long MIN_TIME_MS = -62_135_596_800_000L;
    private static final long MAX_TIME_MS = 253_402_300_799_999L;
    private static final String NOT_UTF8 = "\u0000not-utf-8\u0000";

    private final String spec;
    private final int partition;
    private transient String timeField;
    private transient int maxDepth;
    private transient Map<String, Integer> needed;
    private transient View[] views;
    private transient int arity;
    private transient JsonFactory json;
    private transient long seq;
    private transient ListState<Long> seqState;

    public JsonPrepare(String spec, int partition) {
        this.spec = spec;
        this.partition = partition;
        parse(); // fails at build time, not on a worker
    }

    /** One view's part of the spec. */
    private static final class View {
        long low;
        long high;
        long beatOffset;
        long lastRowMs;
        String[] keyNames;
        String[] keyTypes;
        String[] selectNames; // null: no event transform
        EventExpr[] selectExprs;
        EventExpr where;
        String[] columns; // null: Count()
        String[] dtypes; // null: only nullness (Count(col))
        boolean[] isTime;
        List<Integer> ordered = new ArrayList<>();

        int width() {
            return 3 + 1 + keyNames.length + 1 + columns.length + ordered.size();
        }
    }

    private void parse() {
        JsonNode root;
        try {
            root = new ObjectMapper().readTree(spec);
        } catch (Exception err) {
            throw new IllegalArgumentException("bad spec: " + err.getMessage(), err);
        }
        timeField = root.get("time").asText();
        maxDepth = root.get("max_depth").asInt();
        needed = new HashMap<>();
        for (JsonNode field : root.get("fields")) {
            needed.put(field.asText(), needed.size());
        }
        List<View> parsed = new ArrayList<>();
        arity = 5;
        for (JsonNode node : root.get("views")) {
            View view = new View();
            view.low = node.get("low").asLong();
            view.high = node.get("high").asLong();
            view.beatOffset = node.get("beat_offset").asLong();
            view.lastRowMs = node.get("last_row_ms").asLong();
            JsonNode keys = node.get("keys");
            view.keyNames = new String[keys.size()];
            view.keyTypes = new String[keys.size()];
            for (int i = 0; i < keys.size(); i++) {
                view.keyNames[i] = keys.get(i).get(0).asText();
                view.keyTypes[i] = keys.get(i).get(1).asText();
            }
            JsonNode select = node.get("select");
            if (select != null && !select.isNull()) {
                int n = select.size();
                view.selectNames = new String[n];
                view.selectExprs = new EventExpr[n];
                Iterator<Map.Entry<String, JsonNode>> outputs = select.fields();
                for (int i = 0; outputs.hasNext(); i++) {
                    Map.Entry<String, JsonNode> output = outputs.next();
                    view.selectNames[i] = output.getKey();
                    view.selectExprs[i] = EventExpr.of(output.getValue());
                }
                JsonNode where = node.get("where");
                view.where = where == null || where.isNull() ? null : EventExpr.of(where);
            }
            JsonNode features = node.get("features");
            int n = features.size();
            view.columns = new String[n];
            view.dtypes = new String[n];
            view.isTime = new boolean[n];
            for (int i = 0; i < n; i++) {
                JsonNode feature = features.get(i);
                JsonNode column = feature.get("column");
                JsonNode dtype = feature.get("dtype");
                view.columns[i] = column.isNull() ? null : column.asText();
                view.dtypes[i] = dtype.isNull() ? null : dtype.asText();
                view.isTime[i] = timeField.equals(view.columns[i]);
                if (feature.get("ordered").asBoolean()) {
                    view.ordered.add(i);
                }
            }
            arity += view.width();
            parsed.add(view);
        }
        views = parsed.toArray(new View[0]);
    }

    @Override
    public void initializeState(FunctionInitializationContext context) throws Exception {
        seqState = context.getOperatorStateStore()
                .getListState(new ListStateDescriptor<>("seq", Types.LONG));
        seq = 0;
        for (Long restored : seqState.get()) {
            seq = Math.max(seq, restored);
        }
    }

    @Override
    public void snapshotState(FunctionSnapshotContext context) throws Exception {
        seqState.update(List.of(seq));
    }

    @Override
    public void processElement(String raw, Context ctx, Collector<Row> out) {
        seq += 1;
        out.collect(prepare(raw, seq));
    }

    /** The output row of the event {@code raw} at position {@code position}. */
    Row prepare(String raw, long position) {
        if (json == null) {
            parse();
            json = new JsonFactory();
        }
        Row row = new Row(arity);
        row.setField(0, raw);
        row.setField(1, position);
        row.setField(2, partition);
        try {
            decide(raw, row);
            row.setField(3, false);
        } catch (EventExpr.Undecided undecided) {
            for (int i = 4; i < arity; i++) {
                row.setField(i, null);
            }
            row.setField(3, true);
        }
        return row;
    }

    /**
     * The output rows of {@code raws} as JSON (a list of field lists), for tests comparing them
     * with the Python {@code prepare} outside Flink.
     */
    public static String prepareAll(String spec, String[] raws) throws Exception {
        JsonPrepare prepare = new JsonPrepare(spec, 0);
        List<List<Object>> rows = new ArrayList<>();
        for (int i = 0; i < raws.length; i++) {
            Row row = prepare.prepare(raws[i], i + 1);
            List<Object> fields = new ArrayList<>();
            for (int f = 0; f < row.getArity(); f++) {
                fields.add(row.getField(f));
            }
            rows.add(fields);
        }
        return new ObjectMapper().writeValueAsString(rows);
    }

    private void decide(String raw, Row row) throws EventExpr.Undecided {
        Map<String, Object> event = decode(raw);
        long timeMs = eventTime(event.get(timeField));
        row.setField(4, timeMs);
        int at = 5;
        for (View view : views) {
            if (timeMs < view.low || timeMs > view.high) {
                throw EventExpr.Undecided.INSTANCE; // a bad_time dead letter
            }
            prepare(view, event, timeMs, row, at);
            at += view.width();
        }
    }

    /** The needed fields of a JSON object (absent: not in the map), or Undecided. */
    private Map<String, Object> decode(String raw) throws EventExpr.Undecided {
        if (raw == null || raw.startsWith(NOT_UTF8) || raw.startsWith("\uFEFF")) {
            throw EventExpr.Undecided.INSTANCE;
        }
        Map<String, Object> event = new HashMap<>();
        try (JsonParser parser = json.createParser(raw)) {
            if (parser.nextToken() != JsonToken.START_OBJECT) {
                throw EventExpr.Undecided.INSTANCE; // not an object: unparseable
            }
            int depth = 1;
            while (depth > 0) {
                JsonToken token = parser.nextToken();
                if (token == null) {
                    throw EventExpr.Undecided.INSTANCE;
                }
                if (token == JsonToken.START_OBJECT || token == JsonToken.START_ARRAY) {
                    if (++depth > maxDepth) {
                        throw EventExpr.Undecided.INSTANCE; // Python's nesting limit
                    }
                    if (depth == 2 && needed.containsKey(parser.currentName())) {
                        throw EventExpr.Undecided.INSTANCE; // a needed field that is not a scalar
                    }
                } else if (token == JsonToken.END_OBJECT || token == JsonToken.END_ARRAY) {
                    depth -= 1;
                } else if (token != JsonToken.FIELD_NAME && depth == 1) {
                    String name = parser.currentName();
                    if (needed.containsKey(name)) {
                        if (event.containsKey(name)) {
                            throw EventExpr.Undecided.INSTANCE; // a duplicate: Python keeps the last
                        }
                        event.put(name, scalar(parser, token));
                    }
                }
            }
            if (parser.nextToken() != null) {
                throw EventExpr.Undecided.INSTANCE; // text after the object
            }
        } catch (EventExpr.Undecided undecided) {
            throw undecided;
        } catch (Exception notJson) {
            throw EventExpr.Undecided.INSTANCE;
        }
        return event;
    }

    private static Object scalar(JsonParser parser, JsonToken token) throws Exception {
        switch (token) {
            case VALUE_STRING: {
                String text = parser.getText();
                for (int i = 0; i < text.length(); i++) {
                    char c = text.charAt(i);
                    if (Character.isHighSurrogate(c) && i + 1 < text.length()
                            && Character.isLowSurrogate(text.charAt(i + 1))) {
                        i += 1; // a pair: one code point, as Python decodes it
                    } else if (Character.isSurrogate(c)) {
                        throw EventExpr.Undecided.INSTANCE; // a lone surrogate, which Python keeps as is
                    }
                }
                return text;
            }
            case VALUE_NUMBER_INT:
                if (parser.getNumberType() == JsonParser.NumberType.BIG_INTEGER) {
                    throw EventExpr.Undecided.INSTANCE; // beyond int64
                }
                return parser.getLongValue();
            case VALUE_NUMBER_FLOAT: {
                double value = parser.getDoubleValue();
                if (!Double.isFinite(value)) {
                    throw EventExpr.Undecided.INSTANCE;
                }
                return value;
            }
            case VALUE_TRUE:
                return Boolean.TRUE;
            case VALUE_FALSE:
                return Boolean.FALSE;
            case VALUE_NULL:
                return null;
            default:
                throw EventExpr.Undecided.INSTANCE;
        }
    }

    /** {@code timeutil.parse_event_time} for the forms decided here, from 1970 on. */
    static long eventTime(Object value) throws EventExpr.Undecided {
        long ms;
        if (value instanceof Long) {
            long v = (Long) value;
            ms = v > -SECONDS_THRESHOLD && v < SECONDS_THRESHOLD ? v * 1000 : v;
        } else if (value instanceof Double) {
            double v = (Double) value;
            if (Math.abs(v) < SECONDS_THRESHOLD) {
                v = v * 1000.0;
            }
            if (!(Math.abs(v) < 1e17)) {
                throw EventExpr.Undecided.INSTANCE;
            }
            ms = (long) Math.floor(v);
        } else if (value instanceof String) {
            ms = isoTime((String) value);
        } else {
            throw EventExpr.Undecided.INSTANCE; // absent, null or boolean: a dead letter
        }
        if (ms < 0 || ms > MAX_TIME_MS || ms < MIN_TIME_MS) {
            throw EventExpr.Undecided.INSTANCE; // before 1970: flooring differs; out of range
        }
        return ms;
    }

    /**
     * The ISO-8601 forms decided here, read by hand (a regular expression was 4% of the job):
     * {@code YYYY-MM-DD}, optionally followed by {@code T} or a space, {@code HH:MM}, optionally
     * {@code :SS} and then {@code .} and 1 to 6 digits, and then optionally {@code Z} or
     * {@code +HH:MM} / {@code -HH:MM}. Python's {@code fromisoformat} accepts more: those go to Python.
     */
    private static long isoTime(String text) throws EventExpr.Undecided {
        int n = text.length();
        int i = 10;
        if (n < i || text.charAt(4) != '-' || text.charAt(7) != '-') {
            throw EventExpr.Undecided.INSTANCE;
        }
        int year = digits(text, 0, 4);
        int month = digits(text, 5, 2);
        int day = digits(text, 8, 2);
        int hour = 0;
        int minute = 0;
        int second = 0;
        long micros = 0;
        long offsetSeconds = 0;
        if (i < n) {
            char separator = text.charAt(i);
            if ((separator != 'T' && separator != ' ') || n < i + 6 || text.charAt(i + 3) != ':') {
                throw EventExpr.Undecided.INSTANCE;
            }
            hour = digits(text, i + 1, 2);
            minute = digits(text, i + 4, 2);
            i += 6;
            if (i < n && text.charAt(i) == ':') {
                if (n < i + 3) {
                    throw EventExpr.Undecided.INSTANCE;
                }
                second = digits(text, i + 1, 2);
                i += 3;
                if (i < n && text.charAt(i) == '.') {
                    int start = ++i;
                    while (i < n && i - start < 6 && isDigit(text.charAt(i))) {
                        i++;
                    }
                    if (i == start) {
                        throw EventExpr.Undecided.INSTANCE;
                    }
                    micros = digits(text, start, i - start);
                    for (int k = i - start; k < 6; k++) {
                        micros *= 10;
                    }
                }
            }
            if (i < n && text.charAt(i) == 'Z') {
                i++;
            } else if (i < n && (text.charAt(i) == '+' || text.charAt(i) == '-')) {
                if (n < i + 6 || text.charAt(i + 3) != ':') {
                    throw EventExpr.Undecided.INSTANCE;
                }
                int hours = digits(text, i + 1, 2);
                int minutes = digits(text, i + 4, 2);
                if (hours > 23 || minutes > 59) {
                    throw EventExpr.Undecided.INSTANCE;
                }
                offsetSeconds = (hours * 3600L + minutes * 60L) * (text.charAt(i) == '-' ? -1 : 1);
                i += 6;
            }
            if (i != n) {
                throw EventExpr.Undecided.INSTANCE;
            }
        }
        try {
            LocalDate date = LocalDate.of(year, month, day);
            LocalTime time = LocalTime.of(hour, minute, second);
            long seconds = date.toEpochDay() * 86_400L + time.toSecondOfDay() - offsetSeconds;
            return seconds * 1000 + micros / 1000;
        } catch (DateTimeException invalid) {
            throw EventExpr.Undecided.INSTANCE;
        }
    }

    private static boolean isDigit(char c) {
        return c >= '0' && c <= '9';
    }

    /** The number written by the ASCII digits {@code text[start, start + count)}. */
    private static int digits(String text, int start, int count) throws EventExpr.Undecided {
        int value = 0;
        for (int i = start; i < start + count; i++) {
            char c = text.charAt(i);
            if (!isDigit(c)) {
                throw EventExpr.Undecided.INSTANCE;
            }
            value = value * 10 + (c - '0');
        }
        return value;
    }

    private static void prepare(View view, Map<String, Object> event, long timeMs, Row row, int at)
            throws EventExpr.Undecided {
        Map<String, Object> fields = event;
        boolean kept = true;
        if (view.selectNames != null) {
            if (view.where != null) {
                kept = Boolean.TRUE.equals(EventExpr.logic(view.where.eval(event)));
            }
            if (kept) {
                fields = new HashMap<>();
                for (int i = 0; i < view.selectNames.length; i++) {
                    fields.put(view.selectNames[i], view.selectExprs[i].eval(event));
                }
            }
        }
        int columns = view.width() - 3;
        if (!kept) { // a heartbeat: no row, but the watermark moves on
            row.setField(at, FILTERED);
            row.setField(at + 1, 0);
            row.setField(at + 2, null);
            for (int i = 0; i < columns; i++) {
                row.setField(at + 3 + i, null);
            }
            row.setField(at + 3, HEARTBEAT);
            row.setField(at + 3 + 1 + view.keyNames.length, Math.min(timeMs + view.beatOffset, view.lastRowMs));
            return;
        }
        row.setField(at, OK);
        row.setField(at + 1, 1);
        row.setField(at + 2, null);
        int c = at + 3;
        row.setField(c++, ROW);
        for (int i = 0; i < view.keyNames.length; i++) {
            Object key = fields.get(view.keyNames[i]);
            if (key == null) {
                throw EventExpr.Undecided.INSTANCE; // missing_key
            }
            row.setField(c++, coerce(key, view.keyTypes[i]));
        }
        row.setField(c++, timeMs);
        int valuesAt = c;
        for (int i = 0; i < view.columns.length; i++) {
            Object value;
            if (view.columns[i] == null) {
                value = Boolean.TRUE; // Count(): every row
            } else if (view.isTime[i]) {
                value = view.dtypes[i] == null ? Boolean.TRUE : timeMs; // UnixTimestamp (checked in Python)
            } else {
                Object raw = fields.get(view.columns[i]);
                if (view.dtypes[i] == null) { // Count(col): only nullness, NaN counting as null
                    boolean nothing = raw == null || raw instanceof Double && Double.isNaN((Double) raw);
                    value = nothing ? null : Boolean.TRUE;
                } else {
                    value = coerce(raw, view.dtypes[i]);
                }
            }
            row.setField(c++, value);
        }
        for (int i : view.ordered) {
            Object value = row.getField(valuesAt + i);
            row.setField(c++, value == null ? null : encodeOrdered(timeMs, value, view.dtypes[i]));
        }
    }

    /** {@code dtypes.coerce} to the engine value, or Undecided where Python raises. */
    static Object coerce(Object value, String dtype) throws EventExpr.Undecided {
        if (value == null) {
            return null;
        }
        switch (dtype) {
            case "String":
                if (value instanceof String) {
                    return value;
                }
                break;
            case "Int64":
                if (value instanceof Long) {
                    return value;
                }
                break;
            case "Int32":
                if (value instanceof Long) {
                    long v = (Long) value;
                    if (v >= Integer.MIN_VALUE && v <= Integer.MAX_VALUE) {
                        return (int) v;
                    }
                }
                break;
            case "Float64":
            case "Float32":
                if (value instanceof Long || value instanceof Double) {
                    double v = ((Number) value).doubleValue();
                    if (Double.isNaN(v)) {
                        return null;
                    }
                    if (Double.isInfinite(v)) {
                        break; // wrong_type
                    }
                    return v;
                }
                break;
            case "Bool":
                if (value instanceof Boolean) {
                    return value;
                }
                break;
            case "UnixTimestamp":
                if (value instanceof Boolean) {
                    break;
                }
                return eventTime(value);
            default:
                break;
        }
        throw EventExpr.Undecided.INSTANCE; // a wrong_type dead letter, or a type not decided here
    }

    /** {@code flink_sql.encode_ordered}: text whose byte order is the order of (time, value). */
    static String encodeOrdered(long ts, Object value, String dtype) {
        StringBuilder text = new StringBuilder(hex64(ts ^ Long.MIN_VALUE));
        switch (dtype) {
            case "Int64":
            case "Int32":
            case "UnixTimestamp":
                text.append(hex64(((Number) value).longValue() ^ Long.MIN_VALUE));
                break;
            case "Float64":
            case "Float32": {
                long bits = Double.doubleToRawLongBits((Double) value);
                text.append(hex64(bits < 0 ? ~bits : bits | Long.MIN_VALUE));
                break;
            }
            case "Bool":
                text.append((Boolean) value ? "1" : "0");
                break;
            default: {
                for (byte b : ((String) value).getBytes(StandardCharsets.UTF_8)) {
                    text.append(Character.forDigit((b >> 4) & 0xF, 16)).append(Character.forDigit(b & 0xF, 16));
                }
                break;
            }
        }
        return text.toString();
    }

    private static String hex64(long value) {
        String hex = Long.toHexString(value);
        return "0000000000000000".substring(hex.length()) + hex;
    }
}
