package mlfs.flink;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;

/** A Kafka message's value as {@link Utf8Text} (one event per message, as a file line would be). */
public class Utf8Strings implements DeserializationSchema<String> {
    private static final long serialVersionUID = 1L;

    @Override
    public String deserialize(byte[] message) {
        return message == null ? null : Utf8Text.of(message, 0, message.length);
    }

    @Override
    public boolean isEndOfStream(String next) {
        return false;
    }

    @Override
    public TypeInformation<String> getProducedType() {
        return Types.STRING;
    }
}
