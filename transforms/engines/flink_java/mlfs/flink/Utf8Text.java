package mlfs.flink;

import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;

/**
 * An event's bytes as text, as {@code transforms.events.event_text} makes it: UTF-8, or, where
 * the bytes are not UTF-8, {@code NOT_UTF8} followed by each byte as one character (Latin-1, so
 * the bytes themselves reach Python), so stage 1 dead-letters the event as unparseable instead of
 * reading mangled keys.
 */
final class Utf8Text {
    static final String NOT_UTF8 = "\u0000not-utf-8\u0000";

    private Utf8Text() {}

    static String of(byte[] bytes, int offset, int length) {
        boolean ascii = true;
        for (int i = offset; i < offset + length && ascii; i++) {
            ascii = bytes[i] >= 0;
        }
        if (ascii) { // most events: no decoder needed
            return new String(bytes, offset, length, StandardCharsets.ISO_8859_1);
        }
        try {
            return StandardCharsets.UTF_8
                    .newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(bytes, offset, length))
                    .toString();
        } catch (CharacterCodingException e) {
            return NOT_UTF8 + new String(bytes, offset, length, StandardCharsets.ISO_8859_1);
        }
    }
}
