package dev.edgepatch;

import java.nio.ByteBuffer;

/** A frozen backbone with named task patches; predictions use the active one. Any number of
 *  threads may predict at once; loading, activating and unloading are seen whole. */
public final class Runtime extends Handle {
    static {
        Native.load();
    }

    /** The shipped int8 MobileNetV2. */
    public Runtime() {
        super(nativeNew(null));
    }

    /** An ONNX model's bytes. */
    public Runtime(byte[] onnxModel) {
        super(nativeNew(java.util.Objects.requireNonNull(onnxModel, "onnxModel")));
    }

    /** Keeps a patch file's bytes under {@code name} (checked against the backbone). */
    public void loadPatch(String name, byte[] patch) {
        nativeLoadPatch(handle(), name, patch);
    }

    public void loadPatchFile(String name, String path) {
        nativeLoadPatchFile(handle(), name, path);
    }

    public void unload(String name) {
        nativeUnload(handle(), name);
    }

    /** Makes patch {@code name} active; null: the backbone's own classes. */
    public void activate(String name) {
        nativeActivate(handle(), name);
    }

    /** The active patch's name, or null. */
    public String active() {
        return nativeActive(handle());
    }

    public String[] patches() {
        return nativeNames(handle(), 0);
    }

    /** The class names predictions come in now. */
    public String[] labels() {
        return nativeNames(handle(), 1);
    }

    /** "auto", "cpu" or "gpu"; a {@code DEVICE} exception leaves the runtime as it was. */
    public void setDevice(String device) {
        nativeSetDevice(handle(), device);
    }

    public String device() {
        return nativeDevice(handle());
    }

    /** The top {@code k} classes of a {@code width × height} RGB image (3 bytes a pixel, rows top
     *  to bottom, any size: resized here), best first. */
    public Prediction[] predict(byte[] rgb, int width, int height, int k) {
        return nativePredict(handle(), rgb, width, height, k);
    }

    /** {@link #predict(byte[], int, int, int)} from a buffer's remaining bytes (its position is
     *  left as it was). */
    public Prediction[] predict(ByteBuffer rgb, int width, int height, int k) {
        byte[] bytes = new byte[rgb.remaining()];
        rgb.duplicate().get(bytes);
        return predict(bytes, width, height, k);
    }

    /** The top {@code k} classes of a JPEG or PNG file. */
    public Prediction[] predictFile(String path, int k) {
        return nativePredictFile(handle(), path, k);
    }

    @Override
    void free(long handle) {
        nativeFree(handle);
    }

    private static native long nativeNew(byte[] model);
    private static native void nativeFree(long handle);
    private static native void nativeLoadPatch(long handle, String name, byte[] patch);
    private static native void nativeLoadPatchFile(long handle, String name, String path);
    private static native void nativeUnload(long handle, String name);
    private static native void nativeActivate(long handle, String name);
    private static native String nativeActive(long handle);
    private static native String[] nativeNames(long handle, int which);
    private static native void nativeSetDevice(long handle, String device);
    private static native String nativeDevice(long handle);
    private static native Prediction[] nativePredict(long handle, byte[] rgb, int width, int height, int k);
    private static native Prediction[] nativePredictFile(long handle, String path, int k);
}
