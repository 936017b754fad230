//! The trained values and optimizer state of a GPU trainer as host vectors, for syncing a graph
//! and for checkpoints ([`crate::train::checkpoint`]), and back.

use super::GpuTrainer;
use crate::backend::gpu::kernels::{bytes_of, f32s, Range};
use crate::graph::Graph;
use crate::patch;
use crate::train::checkpoint::OptimizerState;
use crate::train::OptimizerKind;
use crate::{Error, Result};

impl GpuTrainer {
    /// All the words of `buf`.
    fn read_all(&self, buf: &std::sync::Arc<wgpu::Buffer>) -> Result<Vec<f32>> {
        let mut encoder = self.gpu.encoder();
        let staging = self.gpu.stage(&mut encoder, &Range::whole(buf.clone()));
        self.gpu.queue.submit([encoder.finish()]);
        Ok(f32s(&self.gpu.read_staged(&staging)?))
    }

    /// Words `[at, at + len)` of each slot in `all` (from word `base`).
    fn per_slot(&self, all: &[f32], base: usize) -> Vec<Vec<f32>> {
        self.layout.iter().map(|&(at, len)| all[base + at..base + at + len].to_vec()).collect()
    }

    /// The trained values, one vector per slot (in slot order).
    pub fn read_params(&self) -> Result<Vec<Vec<f32>>> {
        let mut encoder = self.gpu.encoder();
        let staging = self.gpu.stage(&mut encoder, &Range::whole(self.params.clone()));
        self.gpu.queue.submit([encoder.finish()]);
        let all = f32s(&self.gpu.read_staged(&staging)?);
        Ok(self.layout.iter().map(|&(at, len)| all[at..at + len].to_vec()).collect())
    }

    /// Copies the trained values into `graph` (the graph the trainer was made from).
    pub fn sync(&self, graph: &mut Graph) -> Result<()> {
        for (s, v) in self.slots.iter().zip(self.read_params()?) {
            patch::param_mut(graph, *s).copy_from_slice(&v);
        }
        Ok(())
    }

    /// Kinds of optimizer state vectors: Adam's two moments, else one.
    fn kinds(&self) -> usize {
        if self.settings.optimizer == OptimizerKind::Adam {
            2
        } else {
            1
        }
    }

    /// The trained values and the optimizer's state, as the CPU optimizer keeps them.
    pub fn save_state(&self) -> Result<(Vec<Vec<f32>>, OptimizerState)> {
        let state = self.read_all(&self.state)?;
        let slots = (0..self.kinds()).map(|k| self.per_slot(&state, k * self.total)).collect();
        let t = if self.kinds() == 2 { self.adam_t } else { 0 };
        Ok((self.read_params()?, OptimizerState { slots, t }))
    }

    /// Takes up values and optimizer state from [`GpuTrainer::save_state`] (or a CPU trainer's of
    /// the same patch), uploading them.
    pub fn load_state(&mut self, params: Vec<Vec<f32>>, state: OptimizerState) -> Result<()> {
        let lens: Vec<usize> = self.layout.iter().map(|&(_, len)| len).collect();
        let fits = |v: &[Vec<f32>]| v.len() == lens.len() && v.iter().zip(&lens).all(|(x, &n)| x.len() == n);
        if !fits(&params) || state.slots.len() != self.kinds() || !state.slots.iter().all(|k| fits(k)) {
            return Err(Error::Train("the checkpoint's values or optimizer state are not this patch's".into()));
        }
        if self.kinds() == 2 && state.t < 1 {
            return Err(Error::Train(format!("the checkpoint's Adam step {} is not positive", state.t)));
        }
        let pack = |v: &[Vec<f32>], base: usize, words: &mut [f32]| {
            for (x, &(at, len)) in v.iter().zip(&self.layout) {
                words[base + at..base + at + len].copy_from_slice(x);
            }
        };
        let mut p = vec![0f32; self.total];
        pack(&params, 0, &mut p);
        let mut s = vec![0f32; self.kinds() * self.total];
        for (k, kind) in state.slots.iter().enumerate() {
            pack(kind, k * self.total, &mut s);
        }
        self.gpu.queue.write_buffer(&self.params, 0, &bytes_of(&p));
        self.gpu.queue.write_buffer(&self.state, 0, &bytes_of(&s));
        self.gpu.check()?;
        if self.kinds() == 2 {
            self.adam_t = state.t;
        }
        Ok(())
    }
}
