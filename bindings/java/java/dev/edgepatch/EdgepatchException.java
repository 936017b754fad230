package dev.edgepatch;

/** Any failure of the runtime, with its message and kind. Unchecked, like the JDK's own
 *  {@code IllegalArgumentException}: an app catches it where it can recover. */
public class EdgepatchException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** What went wrong; {@link #code()} is the C ABI's status number. */
    public enum Kind {
        ARGUMENT(1), MODEL(2), PATCH(3), IMAGE(4), IO(5), TRAIN(6), DEVICE(7), BUSY(8), CANCELLED(9), INTERNAL(99);

        private final int code;

        Kind(int code) {
            this.code = code;
        }

        public int code() {
            return code;
        }

        static Kind of(int code) {
            for (Kind k : values()) {
                if (k.code == code) {
                    return k;
                }
            }
            return INTERNAL;
        }
    }

    private final Kind kind;

    /** Thrown by the native side. */
    EdgepatchException(int code, String message) {
        super(message);
        this.kind = Kind.of(code);
    }

    public Kind kind() {
        return kind;
    }
}
