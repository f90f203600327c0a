package mlfs.flink;

import java.util.Objects;
import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Keeps the first of consecutive rows with the same key and time: stage 2's results of an OVER
 * aggregate, whose rows of one key and time (tied events, or an event at another's leave time)
 * share a frame and so a result, and leave the operator one after another (one timer emits
 * them). Fields 0 to {@code keys - 1} are the key, field {@code keys} the time. It keeps no state:
 * a checkpoint never falls between two such rows, so a restored job never repeats the row before it.
 */
public class FirstOfTime implements FlatMapFunction<Row, Row> {
    private static final long serialVersionUID = 1L;

    private final int keys;
    private transient Object[] last; // the key and time of the last row kept (immutable values)

    public FirstOfTime(int keys) {
        this.keys = keys;
    }

    @Override
    public void flatMap(Row row, Collector<Row> out) {
        if (last == null) {
            last = new Object[keys + 1];
        } else if (sameAsLast(row)) {
            return;
        }
        for (int i = 0; i <= keys; i++) {
            last[i] = row.getField(i); // copied out: with object reuse the row itself is reused
        }
        out.collect(row);
    }

    private boolean sameAsLast(Row row) {
        for (int i = 0; i <= keys; i++) {
            if (!Objects.equals(last[i], row.getField(i))) {
                return false;
            }
        }
        return true;
    }
}
