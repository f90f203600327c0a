package mlfs.flink;

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
        return new LineReader(stream);
    }

    @Override
    public TypeInformation<String> getProducedType() {
        return Types.STRING;
    }

    static final class LineReader implements Reader<String> {
        private final InputStream in;
        private final byte[] buffer = new byte[1 << 16];
        private int position; // the unread bytes are buffer[position, limit)
        private int limit;
        private byte[] line = new byte[256]; // a line that spans two reads of the buffer
        private boolean afterCr; // the last line ended with \r: a \n right after it belongs to it

        LineReader(InputStream in) {
            this.in = in;
        }

        @Override
        public String read() throws IOException {
            int length = 0; // bytes of this line held in line (only when it spans reads)
            while (true) {
                if (position == limit && !fill()) {
                    return length > 0 ? Utf8Text.of(line, 0, length) : null;
                }
                if (afterCr) {
                    afterCr = false;
                    if (buffer[position] == '\n') {
                        position++;
                        continue;
                    }
                }
                int start = position;
                while (position < limit && buffer[position] != '\n' && buffer[position] != '\r') {
                    position++;
                }
                if (position == limit) { // the line goes on in the next read
                    length = keep(start, position - start, length);
                    continue;
                }
                afterCr = buffer[position] == '\r';
                position++;
                if (length == 0) {
                    return Utf8Text.of(buffer, start, position - 1 - start);
                }
                length = keep(start, position - 1 - start, length);
                return Utf8Text.of(line, 0, length);
            }
        }

        private boolean fill() throws IOException {
            int read = in.read(buffer, 0, buffer.length);
            position = 0;
            limit = Math.max(read, 0);
            return read > 0;
        }

        private int keep(int start, int count, int length) {
            if (length + count > line.length) {
                line = Arrays.copyOf(line, Math.max(line.length * 2, length + count));
            }
            System.arraycopy(buffer, start, line, length, count);
            return length + count;
        }

        @Override
        public void close() throws IOException {
            in.close();
        }
    }
}
