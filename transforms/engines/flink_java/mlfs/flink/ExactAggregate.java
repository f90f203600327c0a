package mlfs.flink;

import org.apache.flink.table.functions.AggregateFunction;

/** A DOUBLE aggregate over {@link ExactAcc}: exact under retraction, so continuous windows never drift. */
public abstract class ExactAggregate extends AggregateFunction<Double, ExactAcc> {
    /** Whether the accumulator keeps the sum of squares too. */
    protected boolean squares() {
        return false;
    }

    @Override
    public ExactAcc createAccumulator() {
        return new ExactAcc();
    }

    public void accumulate(ExactAcc acc, Double value) {
        acc.update(value, 1, squares());
    }

    public void retract(ExactAcc acc, Double value) {
        acc.update(value, -1, squares());
    }

    public void merge(ExactAcc acc, Iterable<ExactAcc> others) {
        for (ExactAcc other : others) {
            acc.merge(other);
        }
    }

    public void resetAccumulator(ExactAcc acc) {
        acc.reset();
    }
}
