//! Resumable training. A checkpoint holds everything a run needs to continue exactly: each
//! group's trained values, optimizer state and step (the learning-rate schedule's position), and
//! each task's data order, position in it, random generator and epoch statistics. Augmentation
//! draws per image from the epoch's seed ([`crate::data::Transform::apply`]), so a loader started
//! mid-epoch yields the batches the interrupted one would have.
//!
//! File: `EPCKPT\0\x01` (8 bytes), the body's length (u64 LE) and CRC-32 (u32 LE), then the body
//! (postcard). It is written atomically ([`crate::fsio::write_atomic`]): a run killed while writing
//! leaves the previous checkpoint. A checkpoint names its run by a digest of what determines the
//! run (backbone, kinds, classes, optimisation settings, data and images), and resuming another
//! run from it is refused.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fit::EpochStats;
use crate::{Error, Result};

/// Where and how often a run writes its checkpoint, and whether it starts from one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpointing {
    /// The checkpoint file (written atomically; an existing one is replaced).
    pub path: PathBuf,
    /// Steps between checkpoints (at least 1); one is also written when training ends.
    pub every: usize,
    /// Continue from the checkpoint at `path` when there is one (it must be of this run); start
    /// from the beginning when there is none.
    pub resume: bool,
}

/// The optimizer's state: per kind of slot (SGD's velocity; Adam's two moments; RMSProp's mean
/// square) one vector per trained tensor, and Adam's step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    pub slots: Vec<Vec<Vec<f32>>>,
    pub t: i32,
}

/// One group's trainer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupState {
    /// Steps taken (the schedule's position).
    pub steps: usize,
    /// Trained values, one vector per slot.
    pub params: Vec<Vec<f32>>,
    pub optimizer: OptimizerState,
}

/// One task's stream of batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    pub rng: u64,
    pub epoch: usize,
    pub order: Vec<u32>,
    pub at: usize,
    pub steps: usize,
    pub loss_sum: f64,
    pub correct: usize,
    pub last_epoch: (f64, usize),
    pub history: Vec<EpochStats>,
}

/// Everything a run needs to continue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The run's digest ([`run_digest`]).
    pub run: u64,
    pub groups: Vec<GroupState>,
    pub streams: Vec<StreamState>,
    /// Steps and images of all tasks so far, and training seconds.
    pub step: usize,
    pub seen: usize,
    pub seconds: f64,
}

const MAGIC: [u8; 8] = *b"EPCKPT\0\x01";
const HEADER: usize = 8 + 8 + 4;
/// Largest checkpoint read: a `full` patch of MobileNetV2 with Adam is about 45 MB.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;

/// The digest of a run's description (FNV-1a, 64 bits).
pub fn run_digest(description: &str) -> u64 {
    digest(description.bytes())
}

/// FNV-1a (64 bits) of `bytes`: what names a run's description, or data a description cannot
/// spell out (the C ABI's images).
pub fn digest(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

impl Checkpoint {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let body = postcard::to_allocvec(self).map_err(|e| Error::Train(format!("encoding a checkpoint: {e}")))?;
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// A checkpoint from a file's bytes; anything but an intact checkpoint is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |why: &str| Error::Train(format!("not a usable checkpoint: {why}"));
        if bytes.len() < HEADER || bytes[..8] != MAGIC {
            return Err(bad("no checkpoint header"));
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
        let body = &bytes[HEADER..];
        if len != body.len() as u64 {
            return Err(bad(&format!("the header declares {len} bytes and {} follow", body.len())));
        }
        if crc32fast::hash(body) != crc {
            return Err(bad("its checksum does not match (damaged)"));
        }
        postcard::from_bytes(body).map_err(|e| bad(&format!("{e}")))
    }

    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsio::write_atomic(path, &self.to_bytes()?)
    }

    /// The checkpoint at `path`, `None` when there is no file there.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        match path.symlink_metadata() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            _ => {}
        }
        let bytes = crate::fsio::read_limited(path, MAX_CHECKPOINT_BYTES, "a checkpoint")?;
        Self::from_bytes(&bytes).map(Some).map_err(|e| Error::Train(format!("{}: {e}", path.display())))
    }
}

/// What determines a run, for its digest: the backbone, and for each task its name, group,
/// classes, settings that change the values trained (not the device, the memory budget or the
/// checkpointing), data and images.
pub fn describe(backbone: &crate::Backbone, tasks: &[super::TaskSpec]) -> String {
    let mut d = format!("{}\n", backbone.fingerprint());
    for t in tasks {
        let c = &t.config;
        d += &format!(
            "{}|{:?}|{:?}|{}|{}|{}|{:?}|{}|{}|{}|{}|{:?}|{}|{}|{}|{}|{:?}|{:?}\n",
            t.name,
            t.group,
            t.train.classes(),
            c.kinds,
            c.epochs,
            c.batch,
            c.lr.map(f32::to_bits),
            c.optimizer,
            c.weight_decay.to_bits(),
            c.label_smoothing.to_bits(),
            c.warmup.to_bits(),
            c.clip_norm.map(f32::to_bits),
            c.resolution,
            c.augment,
            c.seed,
            t.train.spec(),
            t.indices,
            t.validation,
        );
        // The starting values (`--init-from`, or the prototype head) change what is trained; a
        // run without them keeps the description it always had.
        if let Some(p) = &c.init {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for v in p.tensors.iter().flat_map(|t| &t.values) {
                h = (h ^ v.to_bits() as u64).wrapping_mul(0x0100_0000_01b3);
            }
            d += &format!("init {} {:?} {h:016x}\n", p.kinds, p.labels);
        }
    }
    d
}

/// Where a run is when its checkpoint is taken.
#[derive(Debug, Clone, Copy)]
pub(super) struct Position {
    pub run: u64,
    pub step: usize,
    pub seen: usize,
    pub seconds: f64,
}

/// The checkpoint of a run at `at`.
pub(super) fn capture(
    at: Position,
    trainers: &[super::Trainer],
    streams: &[super::stream::Stream],
    group_steps: &[usize],
) -> Result<Checkpoint> {
    let mut groups = Vec::with_capacity(trainers.len());
    for (t, &steps) in trainers.iter().zip(group_steps) {
        let (params, optimizer) = t.save_state()?;
        groups.push(GroupState { steps, params, optimizer });
    }
    Ok(Checkpoint {
        run: at.run,
        groups,
        streams: streams.iter().map(|s| s.state()).collect(),
        step: at.step,
        seen: at.seen,
        seconds: at.seconds,
    })
}

/// Takes up `saved` into the run's trainers, streams and group steps if it is of run `run`;
/// returns the run's steps, images seen and training seconds so far.
pub(super) fn restore(
    saved: Checkpoint,
    run: u64,
    trainers: &mut [super::Trainer],
    streams: &mut [super::stream::Stream],
    group_steps: &mut [usize],
) -> Result<(usize, usize, f64)> {
    if saved.run != run {
        return Err(Error::Train(
            "the checkpoint is of another run (other data, settings, classes or backbone): resume the run that \
             wrote it, or start without --resume"
                .into(),
        ));
    }
    if saved.groups.len() != trainers.len() || saved.streams.len() != streams.len() {
        return Err(Error::Train("the checkpoint's tasks are not this run's".into()));
    }
    if !saved.seconds.is_finite() || saved.seconds < 0.0 {
        return Err(Error::Train("the checkpoint's training time is not a time".into()));
    }
    for ((t, g), steps) in trainers.iter_mut().zip(saved.groups).zip(group_steps.iter_mut()) {
        t.load_state(g.params, g.optimizer)?;
        *steps = g.steps;
    }
    for (s, state) in streams.iter_mut().zip(saved.streams) {
        s.restore(state)?;
    }
    let total: usize = streams.iter().map(|s| s.steps).sum();
    if total != saved.step {
        return Err(Error::Train("the checkpoint's step count disagrees with its tasks'".into()));
    }
    Ok((saved.step, saved.seen, saved.seconds))
}
