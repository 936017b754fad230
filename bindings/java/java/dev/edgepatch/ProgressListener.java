package dev.edgepatch;

/** Called on the fitting thread after every step; returning false stops the fit
 *  ({@link EdgepatchException.Kind#CANCELLED}). An exception it throws stops the fit and reaches
 *  the caller of {@link Trainer#fit}. It must not call the same trainer except {@code cancel}. */
@FunctionalInterface
public interface ProgressListener {
    boolean onProgress(Progress progress);
}
