package mlfs.flink;

import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.types.Row;

/** A row's key: its integer field {@code field} (a source partition). */
public class FieldKey implements KeySelector<Row, Integer> {
    private static final long serialVersionUID = 1L;

    private final int field;

    public FieldKey(int field) {
        this.field = field;
    }

    @Override
    public Integer getKey(Row row) {
        return ((Number) row.getField(field)).intValue();
    }
}
