//! [`Runtime`]: one backbone, its named task patches and the active one, shared by threads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::backend::Device;
use crate::data::image::Rgb8;
use crate::patch::file as patch_file;
use crate::{Backbone, Error, Patch, Result, Scored, Session};

/// A backbone with named task patches, one of them (or none: the backbone's own classes)
/// active for predictions.
///
/// Threads: any number of predictions run at once (they share the state read-only); a change
/// (loading, unloading or activating a patch, moving to another device) waits for the
/// predictions in flight and is seen whole by the ones after it.
pub struct Runtime {
    state: RwLock<State>,
}

struct State {
    backbone: Backbone,
    patches: BTreeMap<String, Patch>,
    active: Option<String>,
    session: Session,
}

impl Runtime {
    /// A runtime over `backbone`, predicting on the CPU with no patch active.
    pub fn new(backbone: Backbone) -> Self {
        let session = Session::new(backbone.clone());
        Runtime { state: RwLock::new(State { backbone, patches: BTreeMap::new(), active: None, session }) }
    }

    /// A runtime over the shipped int8 MobileNetV2 (an error when built without it).
    pub fn embedded() -> Result<Self> {
        Ok(Runtime::new(Backbone::embedded()?))
    }

    /// A runtime over an ONNX model's bytes.
    pub fn from_onnx_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(Runtime::new(Backbone::from_onnx_bytes(bytes)?))
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The frozen backbone (a cheap, shared handle), for a [`crate::app::Trainer`].
    pub fn backbone(&self) -> Backbone {
        self.read().backbone.clone()
    }

    /// Keeps `patch` under `name` (replacing a patch of that name) after checking that it was
    /// made for this backbone; when `name` is active, predictions switch to the new patch.
    pub fn load_patch(&self, name: &str, patch: Patch) -> Result<()> {
        let s = &mut *self.write();
        patch.check(s.backbone.graph(), s.backbone.fingerprint())?;
        if s.active.as_deref() == Some(name) {
            s.session.set_patch(&patch)?;
        }
        s.patches.insert(name.to_string(), patch);
        Ok(())
    }

    /// [`Runtime::load_patch`] from a patch file's bytes (checked: corrupt, truncated or foreign
    /// bytes are an [`Error::Patch`]).
    pub fn load_patch_bytes(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.load_patch(name, patch_file::from_bytes(bytes)?)
    }

    /// [`Runtime::load_patch`] from a patch file.
    pub fn load_patch_file(&self, name: &str, path: &Path) -> Result<()> {
        self.load_patch(name, patch_file::load(path)?)
    }

    /// Forgets the patch `name`; when it was active, the backbone alone becomes active.
    pub fn unload(&self, name: &str) -> Result<()> {
        let s = &mut *self.write();
        s.patches.remove(name).ok_or_else(|| no_patch(name))?;
        if s.active.as_deref() == Some(name) {
            s.session.clear_patch()?;
            s.active = None;
        }
        Ok(())
    }

    /// Makes the loaded patch `name` active, or with `None` the backbone alone. On an error the
    /// active patch stays as it was.
    pub fn activate(&self, name: Option<&str>) -> Result<()> {
        let s = &mut *self.write();
        match name {
            None => {
                s.session.clear_patch()?;
                s.active = None;
            }
            Some(name) => {
                let p = s.patches.get(name).ok_or_else(|| no_patch(name))?;
                s.session.set_patch(p)?;
                s.active = Some(name.to_string());
            }
        }
        Ok(())
    }

    /// The active patch's name (`None`: the backbone alone).
    pub fn active(&self) -> Option<String> {
        self.read().active.clone()
    }

    /// The names of the loaded patches, in order.
    pub fn patches(&self) -> Vec<String> {
        self.read().patches.keys().cloned().collect()
    }

    /// The class names predictions come in: the active patch's, or the backbone's.
    pub fn labels(&self) -> Vec<String> {
        self.read().session.labels().to_vec()
    }

    /// Moves predictions to `device`, keeping the patches and the active one. When the device
    /// cannot be used ([`Error::Gpu`]) the runtime stays as it was.
    pub fn set_device(&self, device: Device) -> Result<()> {
        let s = &mut *self.write();
        let mut session = Session::new_on(s.backbone.clone(), device)?;
        if let Some(p) = s.active.as_ref().and_then(|name| s.patches.get(name)) {
            session.set_patch(p)?;
        }
        s.session = session;
        Ok(())
    }

    /// Where predictions run now: `cpu`, or `gpu (adapter)`.
    pub fn device(&self) -> String {
        self.read().session.device()
    }

    /// The top `k` classes of each image (any size: resized and normalised here), best first,
    /// with the active patch.
    pub fn classify(&self, images: &[Rgb8], k: usize) -> Result<Vec<Vec<Scored>>> {
        if k == 0 {
            return Err(Error::Argument("k is 0: ask for at least one class".into()));
        }
        self.read().session.classify(images, k)
    }

    /// [`Runtime::classify`] on image files (JPEG or PNG, decoded strictly and bounded by
    /// [`crate::data::image::set_max_pixels`]).
    pub fn classify_files(&self, paths: &[&Path], k: usize) -> Result<Vec<Vec<Scored>>> {
        if k == 0 {
            return Err(Error::Argument("k is 0: ask for at least one class".into()));
        }
        self.read().session.classify_files(paths, k)
    }
}

fn no_patch(name: &str) -> Error {
    Error::Argument(format!("no patch named '{name}'"))
}
