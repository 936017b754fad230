package dev.edgepatch;

/** Where a fit is, handed to a {@link ProgressListener} after every step. */
public final class Progress {
    /** 0-based epoch; steps done and in all. */
    public final int epoch, step, totalSteps;
    /** The step's loss, the training accuracy so far in this epoch, the learning rate. */
    public final float loss, accuracy, learningRate, imagesPerSecond;
    /** Estimated seconds left. */
    public final double secondsLeft;

    Progress(int epoch, int step, int totalSteps, float loss, float accuracy, float learningRate,
             float imagesPerSecond, double secondsLeft) {
        this.epoch = epoch;
        this.step = step;
        this.totalSteps = totalSteps;
        this.loss = loss;
        this.accuracy = accuracy;
        this.learningRate = learningRate;
        this.imagesPerSecond = imagesPerSecond;
        this.secondsLeft = secondsLeft;
    }
}
