package mlfs.flink;

import org.apache.flink.api.common.eventtime.TimestampAssigner;
import org.apache.flink.api.common.eventtime.TimestampAssignerSupplier;
import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.eventtime.WatermarkGenerator;
import org.apache.flink.api.common.eventtime.WatermarkGeneratorSupplier;
import org.apache.flink.api.common.eventtime.WatermarkOutput;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.types.Row;

/**
 * The watermark of a source read as {@code partitions} partitions (DESIGN §2): each partition's
 * highest event time so far, minus {@code lagMs}, and the minimum of those over every partition
 * (none until each partition has an event time). It runs over stage 1's classified events, one
 * instance seeing every partition: field {@code partitionField} is the event's partition, field
 * {@code maxField} its partition's highest event time so far (null before the first), field
 * {@code timeField} its own time (the record's timestamp; null for an event without one). A
 * negative {@code lagMs} puts the watermark ahead of the event times, for rows whose event time is
 * that much later than their event's.
 */
public class PartitionWatermarks implements WatermarkStrategy<Row> {
    private static final long serialVersionUID = 1L;

    private final int partitions;
    private final int partitionField;
    private final int maxField;
    private final int timeField;
    private final long lagMs;

    public PartitionWatermarks(int partitions, int partitionField, int maxField, int timeField, long lagMs) {
        if (partitions < 1) {
            throw new IllegalArgumentException("a source has at least one partition");
        }
        this.partitions = partitions;
        this.partitionField = partitionField;
        this.maxField = maxField;
        this.timeField = timeField;
        this.lagMs = lagMs;
    }

    @Override
    public TimestampAssigner<Row> createTimestampAssigner(TimestampAssignerSupplier.Context context) {
        return (row, previous) -> {
            Object time = row.getField(timeField);
            return time == null ? Long.MIN_VALUE : ((Number) time).longValue();
        };
    }

    @Override
    public WatermarkGenerator<Row> createWatermarkGenerator(WatermarkGeneratorSupplier.Context context) {
        return new Generator();
    }

    private final class Generator implements WatermarkGenerator<Row> {
        private final long[] highest = new long[partitions];
        private int unseen = partitions; // partitions without an event time yet
        private long emitted = Long.MIN_VALUE;

        Generator() {
            java.util.Arrays.fill(highest, Long.MIN_VALUE);
        }

        @Override
        public void onEvent(Row row, long timestamp, WatermarkOutput output) {
            Object max = row.getField(maxField);
            if (max == null) {
                return;
            }
            int partition = ((Number) row.getField(partitionField)).intValue();
            if (partition < 0 || partition >= partitions) {
                throw new IllegalStateException(
                        "an event of partition " + partition + " of a source read as " + partitions);
            }
            long value = ((Number) max).longValue();
            if (highest[partition] == Long.MIN_VALUE) {
                unseen--;
            }
            highest[partition] = Math.max(highest[partition], value);
        }

        @Override
        public void onPeriodicEmit(WatermarkOutput output) {
            if (unseen > 0) {
                return;
            }
            long lowest = Long.MAX_VALUE;
            for (long value : highest) {
                lowest = Math.min(lowest, value);
            }
            long watermark;
            try {
                watermark = Math.subtractExact(lowest, lagMs);
            } catch (ArithmeticException beyondLong) {
                return;
            }
            if (watermark > emitted) {
                emitted = watermark;
                output.emitWatermark(new Watermark(watermark));
            }
        }
    }
}
