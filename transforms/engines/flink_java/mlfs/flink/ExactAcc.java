package mlfs.flink;

import java.math.BigInteger;

/** The accumulator of the exact aggregates: counts and exact sums (see {@link Exact}). */
public class ExactAcc {
    /** Values added and not retracted, non-finite ones included. */
    public long count;

    public long nans;
    public long positiveInfinities;
    public long negativeInfinities;
    /** Sum of the finite values in units of 2^-1074 (two's complement bytes; null for zero). */
    public byte[] sum;
    /** Sum of their squares in units of 2^-2148 (only kept by the variance). */
    public byte[] squares;

    public ExactAcc() {}

    void update(Double value, int sign, boolean withSquares) {
        if (value == null) {
            return;
        }
        double x = value;
        count += sign;
        if (Double.isNaN(x)) {
            nans += sign;
        } else if (x == Double.POSITIVE_INFINITY) {
            positiveInfinities += sign;
        } else if (x == Double.NEGATIVE_INFINITY) {
            negativeInfinities += sign;
        } else if (x != 0.0) {
            BigInteger delta = Exact.units(x);
            sum = Exact.write(Exact.read(sum).add(sign > 0 ? delta : delta.negate()));
            if (withSquares) {
                BigInteger square = Exact.squareUnits(x);
                squares = Exact.write(Exact.read(squares).add(sign > 0 ? square : square.negate()));
            }
        }
    }

    void merge(ExactAcc other) {
        count += other.count;
        nans += other.nans;
        positiveInfinities += other.positiveInfinities;
        negativeInfinities += other.negativeInfinities;
        sum = Exact.write(Exact.read(sum).add(Exact.read(other.sum)));
        squares = Exact.write(Exact.read(squares).add(Exact.read(other.squares)));
    }

    void reset() {
        count = nans = positiveInfinities = negativeInfinities = 0;
        sum = squares = null;
    }

    /** The sum as IEEE arithmetic gives it for non-finite values; null when nothing is non-finite. */
    Double nonFinite() {
        if (nans > 0 || (positiveInfinities > 0 && negativeInfinities > 0)) {
            return Double.NaN;
        }
        if (positiveInfinities > 0) {
            return Double.POSITIVE_INFINITY;
        }
        if (negativeInfinities > 0) {
            return Double.NEGATIVE_INFINITY;
        }
        return null;
    }
}
