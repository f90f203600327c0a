package mlfs.flink;

import java.math.BigInteger;

/** Sample variance of doubles: as {@link ExactVariance}, over n * (n - 1); null below two values. */
public class ExactSampleVariance extends ExactVariance {
    @Override
    protected BigInteger divisor(long n) {
        return n < 2 ? null : BigInteger.valueOf(n).multiply(BigInteger.valueOf(n - 1));
    }
}
