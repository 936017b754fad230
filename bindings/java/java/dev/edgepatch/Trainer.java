package dev.edgepatch;

/** Learns one task patch ({@code kinds}: "logits", "sb+logits", "dw+logits", ...) from labelled
 *  images over a runtime's frozen backbone. One call at a time ({@code BUSY} otherwise), except
 *  {@link #cancel()}, which any thread may call while {@link #fit} runs. */
public final class Trainer extends Handle {
    static {
        Native.load();
    }

    /** What a fit reports (the patch stays in the trainer). */
    public static final class FitResult {
        public final float trainAccuracy, finalLoss;
        /** NaN when the fit held no images out. */
        public final float validationAccuracy;
        public final int steps;
        public final float seconds;

        FitResult(float[] r) {
            trainAccuracy = r[0];
            finalLoss = r[1];
            validationAccuracy = r[2];
            steps = (int) r[3];
            seconds = r[4];
        }
    }

    /** Options of the next fits; what is not set keeps its value. */
    public static final class Options {
        String device, optimizer, checkpoint;
        int batch = -1, augment = -1, validation = -1, checkpointEvery = 20;
        long memoryBudget = -1;
        double timeBudget = -1;
        boolean resume = true;

        /** "auto", "cpu" (a new trainer's) or "gpu". */
        public Options device(String d) { device = d; return this; }
        public Options batch(int n) { batch = n; return this; }
        /** "sgd" (the default), "adam" or "rmsprop". */
        public Options optimizer(String o) { optimizer = o; return this; }
        public Options augment(boolean on) { augment = on ? 1 : 0; return this; }
        /** Images held out of each fit and scored at its epochs' ends. */
        public Options validation(int n) { validation = n; return this; }
        /** Bytes training may add to the process's memory; 0: no limit. */
        public Options memoryBudget(long bytes) { memoryBudget = bytes; return this; }
        /** Seconds per fit; 0: no limit. */
        public Options timeBudget(double seconds) { timeBudget = seconds; return this; }
        /** A checkpoint every {@code every} steps at {@code path} ("" for none); with
         *  {@code resume} the next fit resumes a cancelled one. */
        public Options checkpoint(String path, int every, boolean resume) {
            checkpoint = path; checkpointEvery = every; this.resume = resume; return this;
        }
    }

    public Trainer(Runtime runtime, String kinds, String[] labels, int resolution) {
        super(nativeNew(runtime.handle(), kinds, labels, resolution));
    }

    /** Every option is checked first; on a refusal ({@code ARGUMENT}) nothing changes. */
    public void configure(Options o) {
        nativeConfigure(handle(), o.device, o.batch, o.optimizer, o.augment, o.validation, o.memoryBudget,
                o.timeBudget, o.checkpoint, o.checkpointEvery, o.resume);
    }

    /** Adds one training image ({@code width × height} RGB, 3 bytes a pixel) with its label index. */
    public void add(byte[] rgb, int width, int height, int label) {
        nativeAdd(handle(), rgb, width, height, label, false);
    }

    /** Adds one test image for {@link #evaluate()}. */
    public void addTest(byte[] rgb, int width, int height, int label) {
        nativeAdd(handle(), rgb, width, height, label, true);
    }

    /** Training images added so far. */
    public int size() {
        return nativeSize(handle());
    }

    /** Trains for {@code epochs} ({@code lr} ≤ 0: the kinds' default) from {@code seed}; the
     *  listener (may be null) runs after every step. */
    public FitResult fit(int epochs, float lr, long seed, ProgressListener listener) {
        return new FitResult(nativeFit(handle(), epochs, lr, seed, listener));
    }

    /** Stops a fit in progress after its step (any thread). */
    public void cancel() {
        nativeCancel(handle());
    }

    /** The last fit's patch as patch-file bytes. */
    public byte[] patchBytes() {
        return nativePatchBytes(handle());
    }

    /** Writes the last fit's patch to {@code path} atomically. */
    public void save(String path) {
        nativeSave(handle(), path);
    }

    /** {accuracy, then accuracy per class (NaN for a class without test images)}. */
    public float[] evaluate() {
        return nativeEvaluate(handle());
    }

    /** Where the last fit ran ("" before one). */
    public String device() {
        return nativeDevice(handle());
    }

    @Override
    void free(long handle) {
        nativeFree(handle);
    }

    private static native long nativeNew(long runtime, String kinds, String[] labels, int resolution);
    private static native void nativeFree(long handle);
    private static native void nativeConfigure(long handle, String device, int batch, String optimizer, int augment,
            int validation, long memoryBudget, double timeBudget, String checkpoint, int checkpointEvery, boolean resume);
    private static native void nativeAdd(long handle, byte[] rgb, int width, int height, int label, boolean test);
    private static native int nativeSize(long handle);
    private static native float[] nativeFit(long handle, int epochs, float lr, long seed, ProgressListener listener);
    private static native void nativeCancel(long handle);
    private static native byte[] nativePatchBytes(long handle);
    private static native void nativeSave(long handle, String path);
    private static native float[] nativeEvaluate(long handle);
    private static native String nativeDevice(long handle);
}
