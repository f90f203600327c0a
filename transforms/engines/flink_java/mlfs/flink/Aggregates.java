package mlfs.flink;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;

/**
 * {@link ContinuousWindow}'s aggregates: each kind's accumulator (plain data, kept in Flink state),
 * what a row entering and leaving the window does to it (rows leave in the order they entered),
 * and its result as the {@code OVER} query's aggregate gives it. Nulls are skipped, as SQL's
 * aggregates skip them.
 */
final class Aggregates {
    private Aggregates() {}

    static Object create(String kind) {
        switch (kind) {
            case "count":
                return new long[1];
            case "sum_long":
            case "sum_int":
                return new long[2]; // sum, values held
            case "sum_double":
            case "mean":
            case "var_pop":
            case "var_samp":
            case "std_pop":
            case "std_samp":
                return new ExactAcc();
            case "min":
            case "max":
            case "latest":
            case "first":
                return new ArrayDeque<Object[]>();
            case "distinct":
                return new HashMap<Object, Integer>();
            default:
                if (kind.startsWith("last")) {
                    return new ContinuousWindow.Fifo(); // the values held, oldest first
                }
                throw new IllegalArgumentException("unknown aggregate kind " + kind);
        }
    }

    static void add(String kind, Object acc, long seq, long time, Object value) {
        update(kind, acc, seq, time, value, 1);
    }

    static void remove(String kind, Object acc, long seq, long time, Object value) {
        update(kind, acc, seq, time, value, -1);
    }

    /** After rows entered a lifetime window (nothing leaves it): drops what last_k can no longer return. */
    static void keepNewest(String kind, Object acc) {
        if (kind.startsWith("last")) {
            ((ContinuousWindow.Fifo) acc).keepNewest(Integer.parseInt(kind.substring(4)));
        }
    }

    @SuppressWarnings("unchecked")
    private static void update(String kind, Object acc, long seq, long time, Object value, int sign) {
        if (value == null) {
            return;
        }
        switch (kind) {
            case "count":
                ((long[]) acc)[0] += sign;
                return;
            case "sum_long":
            case "sum_int":
                long[] sum = (long[]) acc;
                sum[0] += sign * ((Number) value).longValue();
                sum[1] += sign;
                return;
            case "sum_double":
            case "mean":
                ((ExactAcc) acc).update(((Number) value).doubleValue(), sign, false);
                return;
            case "var_pop":
            case "var_samp":
            case "std_pop":
            case "std_samp":
                ((ExactAcc) acc).update(((Number) value).doubleValue(), sign, true);
                return;
            case "min":
            case "first":
                extreme((ArrayDeque<Object[]>) acc, seq, value, sign, -1);
                return;
            case "max":
            case "latest":
                extreme((ArrayDeque<Object[]>) acc, seq, value, sign, 1);
                return;
            case "distinct":
                HashMap<Object, Integer> counts = (HashMap<Object, Integer>) acc;
                counts.merge(distinctKey(value), sign, (a, b) -> a + b == 0 ? null : a + b);
                return;
            default: // last_k
                ContinuousWindow.Fifo held = (ContinuousWindow.Fifo) acc;
                if (sign > 0) {
                    held.add(new ContinuousWindow.Entry(seq, time, new Object[] {value}));
                } else if (!held.isEmpty() && held.first().seq == seq) {
                    held.removeFirst();
                }
        }
    }

    /**
     * The window's extreme ({@code direction} 1: greatest, -1: least) as a monotonic deque of
     * (entry order, value): a value that can never be the extreme again (an older one beaten by a
     * newer one) is dropped as the newer enters; the front leaves when its row does.
     */
    private static void extreme(ArrayDeque<Object[]> deque, long seq, Object value, int sign, int direction) {
        if (sign > 0) {
            while (!deque.isEmpty() && direction * compare(deque.peekLast()[1], value) <= 0) {
                deque.pollLast();
            }
            deque.addLast(new Object[] {seq, value});
        } else if (!deque.isEmpty() && (Long) deque.peekFirst()[0] == seq) {
            deque.pollFirst();
        }
    }

    @SuppressWarnings("unchecked")
    static Object result(String kind, Object acc) {
        switch (kind) {
            case "count":
                return ((long[]) acc)[0];
            case "sum_long":
                return ((long[]) acc)[1] == 0 ? null : ((long[]) acc)[0];
            case "sum_int":
                return ((long[]) acc)[1] == 0 ? null : (int) ((long[]) acc)[0];
            case "sum_double":
                return SUM.getValue((ExactAcc) acc);
            case "mean":
                return MEAN.getValue((ExactAcc) acc);
            case "var_pop":
                return VAR_POP.getValue((ExactAcc) acc);
            case "var_samp":
                return VAR_SAMP.getValue((ExactAcc) acc);
            case "std_pop":
                return sqrt(VAR_POP.getValue((ExactAcc) acc));
            case "std_samp":
                return sqrt(VAR_SAMP.getValue((ExactAcc) acc));
            case "min":
            case "max":
            case "latest":
            case "first":
                ArrayDeque<Object[]> deque = (ArrayDeque<Object[]>) acc;
                return deque.isEmpty() ? null : deque.peekFirst()[1];
            case "distinct":
                return (long) ((HashMap<Object, Integer>) acc).size();
            default:
                return lastK((ContinuousWindow.Fifo) acc, Integer.parseInt(kind.substring(4)));
        }
    }

    /**
     * The {@code k} greatest ordered texts (time, then value) among those held, joined by commas
     * as {@code LISTAGG} joins them (its reader sorts them and keeps {@code k}); null when none.
     */
    private static String lastK(ContinuousWindow.Fifo held, int k) {
        List<String> texts = new ArrayList<>();
        Long cutoff = null; // the time of the k-th newest text: texts tied with it still compete
        for (int i = 0; i < held.size(); i++) {
            ContinuousWindow.Entry entry = held.fromEnd(i);
            if (cutoff != null && entry.time < cutoff) {
                break;
            }
            texts.add((String) entry.values[0]);
            if (texts.size() == k) {
                cutoff = entry.time;
            }
        }
        if (texts.isEmpty()) {
            return null;
        }
        texts.sort((a, b) -> compare(b, a));
        return String.join(",", texts.subList(0, Math.min(k, texts.size())));
    }

    private static Double sqrt(Double value) {
        return value == null ? null : Math.sqrt(value);
    }

    /** SQL's order: strings by UTF-8 bytes (code points), bytes unsigned, the rest as Java orders them. */
    @SuppressWarnings({"unchecked", "rawtypes"})
    static int compare(Object a, Object b) {
        if (a instanceof String) {
            return compareCodePoints((String) a, (String) b);
        }
        if (a instanceof byte[]) {
            return Arrays.compareUnsigned((byte[]) a, (byte[]) b);
        }
        return ((Comparable) a).compareTo(b);
    }

    /** Python's string order: by code point (Java's compareTo orders UTF-16 units). */
    static int compareCodePoints(String a, String b) {
        int i = 0;
        int j = 0;
        while (i < a.length() && j < b.length()) {
            int x = a.codePointAt(i);
            int y = b.codePointAt(j);
            if (x != y) {
                return Integer.compare(x, y);
            }
            i += Character.charCount(x);
            j += Character.charCount(y);
        }
        return Integer.compare(a.length() - i, b.length() - j);
    }

    /** A value as a key of a hash map: bytes by content, and -0.0 as 0.0 (they are one value). */
    private static Object distinctKey(Object value) {
        if (value instanceof byte[]) {
            return new Bytes((byte[]) value);
        }
        if (value instanceof Double && (Double) value == 0.0) {
            return 0.0;
        }
        return value;
    }

    /** Bytes compared by content (a byte array compares by identity). */
    public static final class Bytes {
        public byte[] bytes;

        public Bytes() {}

        Bytes(byte[] bytes) {
            this.bytes = bytes;
        }

        @Override
        public boolean equals(Object other) {
            return other instanceof Bytes && Arrays.equals(bytes, ((Bytes) other).bytes);
        }

        @Override
        public int hashCode() {
            return Arrays.hashCode(bytes);
        }
    }

    private static final ExactSum SUM = new ExactSum();
    private static final ExactMean MEAN = new ExactMean();
    private static final ExactVariance VAR_POP = new ExactVariance();
    private static final ExactSampleVariance VAR_SAMP = new ExactSampleVariance();
}
