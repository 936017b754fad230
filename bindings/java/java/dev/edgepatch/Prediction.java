package dev.edgepatch;

/** One class of a prediction. */
public final class Prediction {
    public final String label;
    public final float probability;
    public final int index;

    Prediction(String label, float probability, int index) {
        this.label = label;
        this.probability = probability;
        this.index = index;
    }

    @Override
    public String toString() {
        return String.format("%s (%.3f)", label, probability);
    }
}
