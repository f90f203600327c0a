package mlfs.flink;

import java.math.BigInteger;

/**
 * Exact arithmetic on doubles for MLFS's Flink aggregates. A finite double is an integer multiple
 * of 2^-1074, and its square of 2^-2148, so sums of values and of squares are kept as integers in
 * those units: adding and retracting are exact in any order, and a result is rounded once.
 */
public final class Exact {
    static final int VALUE_SCALE = 1074;
    static final int SQUARE_SCALE = 2 * VALUE_SCALE;
    private static final long MANTISSA_MASK = (1L << 52) - 1;

    private Exact() {}

    /** The significand of a finite x: x = significand * 2^(exponent(x) - 1074). */
    private static long significand(double x) {
        long bits = Double.doubleToRawLongBits(x);
        long mantissa = bits & MANTISSA_MASK;
        return ((bits >>> 52) & 0x7ff) == 0 ? mantissa : mantissa | (1L << 52);
    }

    /** The shift of a finite x's significand to units of 2^-1074 (its biased exponent, at least 1) - 1. */
    private static int exponent(double x) {
        int biased = (int) ((Double.doubleToRawLongBits(x) >>> 52) & 0x7ff);
        return Math.max(biased, 1) - 1;
    }

    /** A finite x in units of 2^-1074. */
    static BigInteger units(double x) {
        BigInteger m = BigInteger.valueOf(significand(x)).shiftLeft(exponent(x));
        return x < 0 ? m.negate() : m;
    }

    /** x * x (x finite) in units of 2^-2148. */
    static BigInteger squareUnits(double x) {
        BigInteger m = BigInteger.valueOf(significand(x));
        return m.multiply(m).shiftLeft(2 * exponent(x));
    }

    static BigInteger read(byte[] held) {
        return held == null ? BigInteger.ZERO : new BigInteger(held);
    }

    static byte[] write(BigInteger value) {
        return value.signum() == 0 ? null : value.toByteArray();
    }

    /** num / den * 2^-scale (den > 0), correctly rounded to the nearest double, ties to even. */
    static double quotient(BigInteger num, BigInteger den, int scale) {
        int sign = num.signum();
        if (sign == 0) {
            return 0.0;
        }
        BigInteger n = num.abs();
        // At least 55 bits of quotient, so rounding to 53 sees the half bit and one more.
        int k = Math.max(0, 55 + den.bitLength() - n.bitLength());
        BigInteger[] qr = n.shiftLeft(k).divideAndRemainder(den);
        BigInteger q = qr[0];
        boolean inexact = qr[1].signum() != 0;
        int e = -(scale + k); // the value is (q + remainder/den) * 2^e
        int lsb = Math.max(q.bitLength() - 53 + e, -1074); // the result's last bit, subnormals included
        int shift = lsb - e; // at least 2: q has at least 55 bits
        long m = q.shiftRight(shift).longValue();
        boolean half = q.testBit(shift - 1);
        boolean below = inexact || q.getLowestSetBit() < shift - 1;
        if (half && (below || (m & 1) == 1)) {
            m += 1;
        }
        double r = Math.scalb((double) m, lsb); // exact, or infinite past the largest double
        return sign < 0 ? -r : r;
    }
}
