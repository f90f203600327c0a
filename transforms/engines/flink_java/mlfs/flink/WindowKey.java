package mlfs.flink;

import java.nio.charset.StandardCharsets;
import java.util.Base64;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.types.Row;

/**
 * A prepared row's key as one string (each field typed and escaped), so {@link ContinuousWindow}
 * keys its state by a type Flink serialises natively whatever the view's key columns are.
 */
public class WindowKey implements KeySelector<Row, String> {
    private static final long serialVersionUID = 1L;

    private final int[] fields;

    /** Keys the rows by the key fields {@code spec} names (a {@link ContinuousWindow} spec). */
    public WindowKey(String spec) {
        this.fields = ContinuousWindow.ints(ContinuousWindow.parts(spec).get("keys"));
    }

    @Override
    public String getKey(Row row) {
        StringBuilder key = new StringBuilder();
        for (int field : fields) {
            Object value = row.getField(field);
            if (value == null) {
                key.append('n');
            } else if (value instanceof byte[]) {
                key.append('b').append(Base64.getEncoder().encodeToString((byte[]) value));
            } else if (value instanceof String) {
                String text = (String) value;
                key.append('s').append(text.getBytes(StandardCharsets.UTF_8).length).append(':').append(text);
            } else {
                key.append('v').append(value);
            }
            key.append('\u0000');
        }
        return key.toString();
    }
}
