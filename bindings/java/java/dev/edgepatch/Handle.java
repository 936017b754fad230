package dev.edgepatch;

/** A native object named by a number (not a pointer: a closed handle is refused, never freed
 *  twice). Closing waits for nothing: calls in flight on other threads finish first natively. */
abstract class Handle implements AutoCloseable {
    private volatile long handle;

    Handle(long handle) {
        this.handle = handle;
    }

    /** The live handle, or an {@link IllegalStateException} after {@link #close()}. */
    final long handle() {
        long h = handle;
        if (h == 0) {
            throw new IllegalStateException(getClass().getSimpleName() + " is closed");
        }
        return h;
    }

    abstract void free(long handle);

    @Override
    public final synchronized void close() {
        if (handle != 0) {
            free(handle);
            handle = 0;
        }
    }
}
