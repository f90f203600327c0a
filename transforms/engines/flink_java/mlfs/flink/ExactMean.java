package mlfs.flink;

import java.math.BigInteger;

/** AVG of doubles: the exact sum over the count, rounded once; null when no value is held. */
public class ExactMean extends ExactAggregate {
    @Override
    public Double getValue(ExactAcc acc) {
        if (acc.count == 0) {
            return null;
        }
        Double special = acc.nonFinite();
        return special != null
                ? special
                : Exact.quotient(Exact.read(acc.sum), BigInteger.valueOf(acc.count), Exact.VALUE_SCALE);
    }
}
