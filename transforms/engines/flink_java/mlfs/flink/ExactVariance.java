package mlfs.flink;

import java.math.BigInteger;

/**
 * Population variance of doubles, (n * sum(x^2) - sum(x)^2) / n^2 computed exactly and rounded
 * once; null when no value is held, NaN with a non-finite value.
 */
public class ExactVariance extends ExactAggregate {
    @Override
    protected boolean squares() {
        return true;
    }

    /** The divisor of n * sum(x^2) - sum(x)^2 (null: no variance). */
    protected BigInteger divisor(long n) {
        return BigInteger.valueOf(n).multiply(BigInteger.valueOf(n));
    }

    @Override
    public Double getValue(ExactAcc acc) {
        BigInteger divisor = acc.count == 0 ? null : divisor(acc.count);
        if (divisor == null) {
            return null;
        }
        if (acc.nonFinite() != null) {
            return Double.NaN;
        }
        BigInteger sum = Exact.read(acc.sum);
        BigInteger spread = BigInteger.valueOf(acc.count).multiply(Exact.read(acc.squares)).subtract(sum.multiply(sum));
        return Exact.quotient(spread, divisor, Exact.SQUARE_SCALE);
    }
}
