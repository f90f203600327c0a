package mlfs.flink;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * A source partition's events back in their order after some took the Python path
 * ({@code JsonPrepare}): keyed by partition, an event is emitted when every event before it (by
 * field {@code seqField}, 1-based and gapless per partition) has been, so lateness is judged on
 * the order the partition delivered. Events waiting for an earlier one are held in keyed state.
 */
public class Resequence extends KeyedProcessFunction<Integer, Row, Row> {
    private static final long serialVersionUID = 1L;

    private final int seqField;
    private final TypeInformation<Row> rowType;
    private transient ValueState<Long> next;
    private transient MapState<Long, Row> waiting;

    public Resequence(int seqField, TypeInformation<Row> rowType) {
        this.seqField = seqField;
        this.rowType = rowType;
    }

    @Override
    public void open(OpenContext context) {
        next = getRuntimeContext().getState(new ValueStateDescriptor<>("next", Types.LONG));
        waiting = getRuntimeContext().getMapState(new MapStateDescriptor<>("waiting", Types.LONG, rowType));
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<Row> out) throws Exception {
        long expected = next.value() == null ? 1L : next.value();
        long seq = ((Number) row.getField(seqField)).longValue();
        if (seq != expected) {
            waiting.put(seq, row);
            return;
        }
        out.collect(row);
        expected += 1;
        if (!waiting.isEmpty()) {
            Row held;
            while ((held = waiting.get(expected)) != null) {
                waiting.remove(expected);
                out.collect(held);
                expected += 1;
            }
        }
        next.update(expected);
    }
}
