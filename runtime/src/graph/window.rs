//! The spatial geometry of convolution windows, and ONNX's size-dependent SAME padding.

/// ONNX's `auto_pad` SAME modes: the padding that gives `ceil(input / stride)` outputs, which
/// depends on the input's size, split evenly with the odd pixel at the end (`SameUpper`) or at the
/// beginning (`SameLower`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoPad {
    SameUpper,
    SameLower,
}

impl AutoPad {
    /// The ONNX attribute value.
    pub fn onnx_name(self) -> &'static str {
        match self {
            AutoPad::SameUpper => "SAME_UPPER",
            AutoPad::SameLower => "SAME_LOWER",
        }
    }

    /// `(before, after)` padding along an axis of `size` pixels for kernel `k` and stride `s`.
    pub fn along(self, size: usize, k: usize, s: usize) -> (usize, usize) {
        let out = size.div_ceil(s.max(1));
        let total = ((out.max(1) - 1) * s + k).saturating_sub(size);
        match self {
            AutoPad::SameUpper => (total / 2, total - total / 2),
            AutoPad::SameLower => (total - total / 2, total / 2),
        }
    }
}

/// Spatial geometry of a convolution window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride along height and width.
    pub stride: [usize; 2],
    /// Zero padding: top, left, bottom, right. With `auto`, the padding of an input of the size
    /// the import saw (or zeros); kernels read [`Window::pads_at`].
    pub pads: [usize; 4],
    /// Padding that depends on the input's size (ONNX `auto_pad` SAME at a stride above 1, where
    /// an odd and an even input pad differently); `None`: `pads` as they are.
    pub auto: Option<AutoPad>,
}

impl Window {
    /// A window with fixed padding.
    pub fn new(kernel: [usize; 2], stride: [usize; 2], pads: [usize; 4]) -> Self {
        Window { kernel, stride, pads, auto: None }
    }

    /// The padding (top, left, bottom, right) for an input of `(h, w)`.
    pub fn pads_at(&self, h: usize, w: usize) -> [usize; 4] {
        match self.auto {
            None => self.pads,
            Some(a) => {
                let (t, b) = a.along(h, self.kernel[0], self.stride[0]);
                let (l, r) = a.along(w, self.kernel[1], self.stride[1]);
                [t, l, b, r]
            }
        }
    }

    /// This window for an input of `(h, w)`: its padding fixed ([`Window::pads_at`]).
    pub fn at(&self, h: usize, w: usize) -> Window {
        Window::new(self.kernel, self.stride, self.pads_at(h, w))
    }

    /// Output `(h, w)` for an input of `(h, w)`, or `None` when the window does not fit.
    pub fn output_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let pads = self.pads_at(h, w);
        let ph = h + pads[0] + pads[2];
        let pw = w + pads[1] + pads[3];
        if ph < self.kernel[0] || pw < self.kernel[1] {
            return None;
        }
        Some(((ph - self.kernel[0]) / self.stride[0] + 1, (pw - self.kernel[1]) / self.stride[1] + 1))
    }

    /// True for a 1×1 kernel with stride 1 and no padding (a plain matrix product).
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && (self.pads == [0; 4] || self.auto.is_some())
    }
}
