//! The buffers every pass of a planned program binds at the same place: its input, the batch's
//! labels and per-sample loss, the step's scalars, the gradient norm's parts, and a split step's
//! summed gradients.

use crate::backend::gpu::kernels::Range;
use crate::backend::gpu::Gpu;
use crate::Result;

/// The buffers every pass binds at the same place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::backend::gpu::train) enum IoBuf {
    /// The pass's images `[n, C, h, w]`.
    Input,
    /// The batch's labels `[batch]`.
    Labels,
    /// The per-sample loss and correctness `[2·batch]`.
    Stats,
    /// The step's scalars `[8]`.
    Scalars,
    /// The gradient norm's partial sums.
    Partial,
    /// The gradients summed over the passes of a split step (as long as `grads`).
    Accum,
}

/// The words of each [`IoBuf`] for passes of `n` samples of batches of `batch` (`accum`: the
/// trained values when the step is split, else 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::backend::gpu::train) struct IoSizes {
    pub input: usize,
    pub labels: usize,
    pub stats: usize,
    pub partial: usize,
    pub accum: usize,
}

impl IoSizes {
    /// Bytes of the buffers (as [`crate::backend::gpu::Gpu`] allocates: at least one word each).
    pub fn bytes(&self) -> u64 {
        let words = [self.input, self.labels, self.stats, 8, self.partial];
        words.iter().chain((self.accum > 0).then_some(&self.accum)).map(|&w| 4 * w.max(1) as u64).sum()
    }
}

/// The [`IoBuf`] buffers on the device.
pub(in crate::backend::gpu::train) struct Io {
    input: Range,
    labels: Range,
    stats: Range,
    scalars: Range,
    partial: Range,
    accum: Option<Range>,
}

impl Io {
    pub fn new(gpu: &Gpu, s: IoSizes) -> Result<Self> {
        let make =
            |words: usize, what: &str| -> Result<Range> { Ok(Range::words(&gpu.storage(words, what)?, 0, words)) };
        Ok(Io {
            input: make(s.input, "input")?,
            labels: make(s.labels, "labels")?,
            stats: make(s.stats, "losses")?,
            scalars: make(8, "scalars")?,
            partial: make(s.partial, "norm parts")?,
            accum: if s.accum > 0 { Some(make(s.accum, "summed gradients")?) } else { None },
        })
    }

    /// The range bound for `b` (the input of `n_words`, a pass's part of the input buffer).
    pub fn range(&self, b: IoBuf) -> &Range {
        match b {
            IoBuf::Input => &self.input,
            IoBuf::Labels => &self.labels,
            IoBuf::Stats => &self.stats,
            IoBuf::Scalars => &self.scalars,
            IoBuf::Partial => &self.partial,
            IoBuf::Accum => self.accum.as_ref().expect("a split step's summed gradients"),
        }
    }
}
