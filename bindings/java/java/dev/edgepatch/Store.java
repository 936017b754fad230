package dev.edgepatch;

/** A directory of named task patches; every change is checked and atomic. */
public final class Store extends Handle {
    static {
        Native.load();
    }

    /** Opens the store in {@code dir}; with {@code create} an absent one is made (the directory
     *  must be new or empty). */
    public Store(String dir, boolean create) {
        super(nativeOpen(dir, create));
    }

    /** The tasks' names, in the order they were added. */
    public String[] names() {
        return nativeNames(handle());
    }

    /** Adds (or replaces) task {@code name} with a patch file's bytes. */
    public void add(String name, byte[] patch) {
        nativeAdd(handle(), name, patch);
    }

    public byte[] get(String name) {
        return nativeGet(handle(), name);
    }

    public void remove(String name) {
        nativeRemove(handle(), name);
    }

    /** Loads task {@code name} into {@code runtime} and makes it active. */
    public void activate(Runtime runtime, String name) {
        nativeActivate(handle(), runtime.handle(), name);
    }

    @Override
    void free(long handle) {
        nativeFree(handle);
    }

    private static native long nativeOpen(String dir, boolean create);
    private static native void nativeFree(long handle);
    private static native String[] nativeNames(long handle);
    private static native void nativeAdd(long handle, String name, byte[] patch);
    private static native byte[] nativeGet(long handle, String name);
    private static native void nativeRemove(long handle, String name);
    private static native void nativeActivate(long handle, long runtime, String name);
}
