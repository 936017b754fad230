package dev.edgepatch;

/** Loads the native library once: {@code -Dedgepatch.library=/path/libedgepatch_jni.so}, else
 *  {@code System.loadLibrary("edgepatch_jni")} (on Android, the APK's {@code lib/<abi>/}). */
final class Native {
    private Native() {}

    private static boolean loaded;

    static synchronized void load() {
        if (loaded) {
            return;
        }
        String path = System.getProperty("edgepatch.library");
        if (path != null && !path.isEmpty()) {
            System.load(path);
        } else {
            System.loadLibrary("edgepatch_jni");
        }
        loaded = true;
    }
}
