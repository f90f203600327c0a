package mlfs.flink;

import java.io.Serializable;
import java.util.Map;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;

/**
 * A declarative event transform's expression ({@code transforms.expressions}, from its
 * {@code spec()}) evaluated on one decoded event with exactly the semantics of {@code Expr.eval}.
 * Values are Python's as Java objects: {@code Long} for int, {@code Double} for float,
 * {@code String}, {@code Boolean} and null. Wherever Python's result could differ from the one
 * computed here, or Python would raise, evaluation throws {@link Undecided} and the event goes to
 * the Python row path, which gives the reference outcome (often a dead letter).
 */
abstract class EventExpr implements Serializable {
    private static final long serialVersionUID = 1L;
    private static final long EXACT_FLOAT_INT = 1L << 53; // ints beyond convert to float inexactly

    /** The event cannot be decided here: Python decides it. */
    static final class Undecided extends Exception {
        private static final long serialVersionUID = 1L;
        static final Undecided INSTANCE = new Undecided();

        private Undecided() {
            super(null, null, false, false);
        }
    }

    abstract Object eval(Map<String, Object> event) throws Undecided;

    /** The expression of a spec node; {@code IllegalArgumentException} for one not known here. */
    static EventExpr of(JsonNode spec) {
        String head = spec.get(0).asText();
        switch (head) {
            case "col":
                return new Col(spec.get(1).asText());
            case "lit":
                return new Lit(literal(spec.get(1)));
            case "when":
                return new When(of(spec.get(1)), of(spec.get(2)), of(spec.get(3)));
            case "is_null":
            case "not":
            case "neg":
                return new Unary(head, of(spec.get(1)));
            case "==":
            case "!=":
            case "<":
            case "<=":
            case ">":
            case ">=":
            case "+":
            case "-":
            case "*":
            case "/":
            case "&":
            case "|":
                return new Binary(head, of(spec.get(1)), of(spec.get(2)));
            default:
                throw new IllegalArgumentException("unknown expression " + head);
        }
    }

    private static Object literal(JsonNode node) {
        if (node.isNull()) {
            return null;
        }
        if (node.isBoolean()) {
            return node.booleanValue();
        }
        if (node.isIntegralNumber()) {
            if (!node.canConvertToLong()) {
                throw new IllegalArgumentException("literal beyond int64: " + node);
            }
            return node.longValue();
        }
        if (node.isFloatingPointNumber()) {
            return node.doubleValue();
        }
        if (node.isTextual()) {
            return node.textValue();
        }
        throw new IllegalArgumentException("literal " + node);
    }

    /** Python's {@code bool} operand of {@code &}, {@code |}, {@code ~} and {@code when()}. */
    static Boolean logic(Object value) throws Undecided {
        if (value == null || value instanceof Boolean) {
            return (Boolean) value;
        }
        throw Undecided.INSTANCE; // Python raises: a transform_error
    }

    private static final class Col extends EventExpr {
        private static final long serialVersionUID = 1L;
        final String name;

        Col(String name) {
            this.name = name;
        }

        @Override
        Object eval(Map<String, Object> event) {
            return event.get(name);
        }
    }

    private static final class Lit extends EventExpr {
        private static final long serialVersionUID = 1L;
        final Object value;

        Lit(Object value) {
            this.value = value;
        }

        @Override
        Object eval(Map<String, Object> event) {
            return value;
        }
    }

    private static final class When extends EventExpr {
        private static final long serialVersionUID = 1L;
        final EventExpr condition;
        final EventExpr then;
        final EventExpr otherwise;

        When(EventExpr condition, EventExpr then, EventExpr otherwise) {
            this.condition = condition;
            this.then = then;
            this.otherwise = otherwise;
        }

        @Override
        Object eval(Map<String, Object> event) throws Undecided {
            Boolean taken = logic(condition.eval(event));
            return Boolean.TRUE.equals(taken) ? then.eval(event) : otherwise.eval(event);
        }
    }

    private static final class Unary extends EventExpr {
        private static final long serialVersionUID = 1L;
        final String op;
        final EventExpr operand;

        Unary(String op, EventExpr operand) {
            this.op = op;
            this.operand = operand;
        }

        @Override
        Object eval(Map<String, Object> event) throws Undecided {
            Object value = operand.eval(event);
            if (op.equals("is_null")) {
                return value == null;
            }
            if (value == null) {
                return null;
            }
            if (op.equals("not")) {
                return !logic(value);
            }
            if (value instanceof Long) {
                long v = (Long) value;
                if (v == Long.MIN_VALUE) {
                    throw Undecided.INSTANCE; // Python's int grows past int64
                }
                return -v;
            }
            if (value instanceof Double) {
                return -(Double) value;
            }
            throw Undecided.INSTANCE; // booleans are ints in Python; strings raise
        }
    }

    private static final class Binary extends EventExpr {
        private static final long serialVersionUID = 1L;
        final String op;
        final EventExpr left;
        final EventExpr right;

        Binary(String op, EventExpr left, EventExpr right) {
            this.op = op;
            this.left = left;
            this.right = right;
        }

        @Override
        Object eval(Map<String, Object> event) throws Undecided {
            Object a = left.eval(event);
            Object b = right.eval(event);
            switch (op) {
                case "==":
                    return nullSafeEqual(a, b);
                case "!=":
                    return !nullSafeEqual(a, b);
                case "&": {
                    Boolean x = logic(a);
                    Boolean y = logic(b);
                    if (Boolean.FALSE.equals(x) || Boolean.FALSE.equals(y)) {
                        return false;
                    }
                    return x == null || y == null ? null : Boolean.TRUE;
                }
                case "|": {
                    Boolean x = logic(a);
                    Boolean y = logic(b);
                    if (Boolean.TRUE.equals(x) || Boolean.TRUE.equals(y)) {
                        return true;
                    }
                    return x == null || y == null ? null : Boolean.FALSE;
                }
                default:
                    break;
            }
            if (a == null || b == null) {
                return null;
            }
            switch (op) {
                case "<":
                case "<=":
                case ">":
                case ">=":
                    return ordered(op, a, b);
                default:
                    return arithmetic(op, a, b);
            }
        }
    }

    private static boolean isNumber(Object value) {
        return value instanceof Long || value instanceof Double;
    }

    private static boolean beyondFloat(long value) {
        return value < -EXACT_FLOAT_INT || value > EXACT_FLOAT_INT;
    }

    /** Python's {@code a == b} for the null-safe {@code ==}. */
    static boolean nullSafeEqual(Object a, Object b) throws Undecided {
        if (a == null || b == null) {
            return a == null && b == null;
        }
        if (a instanceof Boolean || b instanceof Boolean) {
            if (a instanceof Boolean && b instanceof Boolean) {
                return a.equals(b);
            }
            if (isNumber(a) || isNumber(b)) {
                throw Undecided.INSTANCE; // True == 1 in Python
            }
            return false;
        }
        if (isNumber(a) && isNumber(b)) {
            if (a instanceof Long && b instanceof Long) {
                return ((Long) a).longValue() == (Long) b;
            }
            if (a instanceof Long && beyondFloat((Long) a) || b instanceof Long && beyondFloat((Long) b)) {
                throw Undecided.INSTANCE; // Python compares an int and a float exactly
            }
            return ((Number) a).doubleValue() == ((Number) b).doubleValue(); // NaN equals nothing
        }
        if (a instanceof String && b instanceof String) {
            return a.equals(b);
        }
        return false; // a string and a number
    }

    /** Python's {@code a op b} for an order comparison of two non-null values. */
    private static boolean ordered(String op, Object a, Object b) throws Undecided {
        int sign;
        if (a instanceof Long && b instanceof Long) {
            sign = Long.compare((Long) a, (Long) b);
        } else if (isNumber(a) && isNumber(b)) {
            if (a instanceof Long && beyondFloat((Long) a) || b instanceof Long && beyondFloat((Long) b)) {
                throw Undecided.INSTANCE;
            }
            double x = ((Number) a).doubleValue();
            double y = ((Number) b).doubleValue();
            if (Double.isNaN(x) || Double.isNaN(y)) {
                return false; // every comparison with NaN is false
            }
            sign = x < y ? -1 : (x > y ? 1 : 0);
        } else if (a instanceof String && b instanceof String) {
            sign = Aggregates.compareCodePoints((String) a, (String) b);
        } else {
            throw Undecided.INSTANCE; // booleans, or mixed kinds (Python raises)
        }
        switch (op) {
            case "<":
                return sign < 0;
            case "<=":
                return sign <= 0;
            case ">":
                return sign > 0;
            default:
                return sign >= 0;
        }
    }

    private static Object arithmetic(String op, Object a, Object b) throws Undecided {
        if (!isNumber(a) || !isNumber(b)) {
            throw Undecided.INSTANCE; // booleans are ints in Python; strings concatenate or raise
        }
        if (op.equals("/")) {
            if (((Number) b).doubleValue() == 0.0) {
                return null; // a zero divisor (0, 0.0 or -0.0) gives null
            }
            if (a instanceof Long && b instanceof Long && (beyondFloat((Long) a) || beyondFloat((Long) b))) {
                throw Undecided.INSTANCE; // Python divides big ints exactly, then rounds once
            }
            return ((Number) a).doubleValue() / ((Number) b).doubleValue();
        }
        if (a instanceof Long && b instanceof Long) {
            long x = (Long) a;
            long y = (Long) b;
            try {
                switch (op) {
                    case "+":
                        return Math.addExact(x, y);
                    case "-":
                        return Math.subtractExact(x, y);
                    default:
                        return Math.multiplyExact(x, y);
                }
            } catch (ArithmeticException overflow) {
                throw Undecided.INSTANCE; // Python's int grows past int64
            }
        }
        double x = ((Number) a).doubleValue(); // Python rounds an int to the nearest float, as Java does
        double y = ((Number) b).doubleValue();
        switch (op) {
            case "+":
                return x + y;
            case "-":
                return x - y;
            default:
                return x * y;
        }
    }
}
