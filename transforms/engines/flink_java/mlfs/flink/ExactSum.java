package mlfs.flink;

import java.math.BigInteger;

/** SUM of doubles, exact and rounded once; null when no value is held. */
public class ExactSum extends ExactAggregate {
    @Override
    public Double getValue(ExactAcc acc) {
        if (acc.count == 0) {
            return null;
        }
        Double special = acc.nonFinite();
        return special != null ? special : Exact.quotient(Exact.read(acc.sum), BigInteger.ONE, Exact.VALUE_SCALE);
    }
}
