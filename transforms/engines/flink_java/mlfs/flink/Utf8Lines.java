package mlfs.flink;

import java.io.BufferedInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.util.Arrays;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.file.src.reader.SimpleStreamFormat;
import org.apache.flink.core.fs.FSDataInputStream;

/**
 * The lines of a file (ended by {@code \n}, {@code \r} or {@code \r\n}, as Flink's own text line
 * format ends them) as {@link Utf8Text}: a line that is not UTF-8 is marked, where Flink's format
 * would replace its bad bytes and hand on a line that reads as good text.
 */
public class Utf8Lines extends SimpleStreamFormat<String> {
    private static final long serialVersionUID = 1L;

    @Override
    public Reader<String> createReader(Configuration config, FSDataInputStream stream) {
        return new LineReader(new BufferedInputStream(stream, 1 << 16));
    }

    @Override
    public TypeInformation<String> getProducedType() {
        return Types.STRING;
    }

    static final class LineReader implements Reader<String> {
        private final InputStream in;
        private byte[] line = new byte[256];
        private int pending = -2; // a byte read ahead after a \r (-2: none)

        LineReader(InputStream in) {
            this.in = in;
        }

        @Override
        public String read() throws IOException {
            int length = 0;
            int b = pending != -2 ? pending : in.read();
            pending = -2;
            if (b == -1) {
                return null;
            }
            while (b != -1 && b != '\n' && b != '\r') {
                if (length == line.length) {
                    line = Arrays.copyOf(line, length * 2);
                }
                line[length++] = (byte) b;
                b = in.read();
            }
            if (b == '\r') {
                int next = in.read();
                if (next != '\n') {
                    pending = next;
                }
            }
            return Utf8Text.of(line, length);
        }

        @Override
        public void close() throws IOException {
            in.close();
        }
    }
}
