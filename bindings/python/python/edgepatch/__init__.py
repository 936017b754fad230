"""edgepatch: learn small task patches over a frozen int8 MobileNetV2, predict with them and
switch them at run time.

Thin classes over the Rust runtime (``edgepatch._edgepatch``): images go in as NumPy ``uint8``
arrays (``H×W×3`` or ``N×H×W×3``, RGB, any size), patches come out as bytes or files. Every
call that predicts, trains or touches files releases the GIL. Errors are ``edgepatch.Error``
subclasses carrying the runtime's message.

>>> import edgepatch
>>> rt = edgepatch.Runtime()                       # the shipped int8 MobileNetV2
>>> rt.predict(image, k=1)[0].label                # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _edgepatch as _native
from ._edgepatch import (
    ArgumentError,
    BusyError,
    CancelledError,
    DeviceError,
    Error,
    ImageError,
    IoError,
    ModelError,
    PatchError,
    Progress,
    TrainError,
    __version__,
    set_max_pixels,
)

__all__ = [
    "Runtime", "Trainer", "Store", "Prediction", "FitResult", "Evaluation", "Progress",
    "Error", "ArgumentError", "ModelError", "PatchError", "ImageError", "IoError", "TrainError",
    "DeviceError", "CancelledError", "BusyError", "set_max_pixels", "__version__",
]

PathLike = Union[str, "os.PathLike[str]"]
Labels = Union[int, Sequence[int], np.ndarray]


@dataclass(frozen=True)
class Prediction:
    """One class of a prediction."""

    label: str
    probability: float
    index: int


@dataclass(frozen=True)
class FitResult:
    """What a fit reports (the patch stays in the trainer: ``save``, ``patch_bytes``)."""

    train_accuracy: float
    final_loss: float
    validation_accuracy: Optional[float]
    device: str
    steps: int
    seconds: float


@dataclass(frozen=True)
class Evaluation:
    """The trained patch on the test images: accuracy and accuracy per class (NaN without images)."""

    accuracy: float
    per_class: List[float]


def _images(images: np.ndarray) -> Tuple[bytes, int, int, int, bool]:
    """(bytes, n, height, width, single) of one H×W×3 image or an N×H×W×3 batch of uint8."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise TypeError(f"images must be uint8 RGB arrays (H×W×3 or N×H×W×3), not {a.dtype}")
    single = a.ndim == 3
    if single:
        a = a[np.newaxis]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ArgumentError(f"images must be H×W×3 or N×H×W×3 RGB arrays, not of shape {np.shape(images)}")
    n, h, w, _ = a.shape
    return np.ascontiguousarray(a).tobytes(), n, h, w, single


def _labels(labels: Labels, n: int) -> List[int]:
    a = np.asarray(labels)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ArgumentError(f"labels must be integers, one per image (got {a.dtype} of shape {a.shape})")
    if (a < 0).any():
        raise ArgumentError(f"label {int(a.min())} is negative")
    if len(a) != n:
        raise ArgumentError(f"{len(a)} labels for {n} images")
    return [int(x) for x in a]


def _patch_bytes(patch: Union[bytes, bytearray, PathLike]) -> bytes:
    if isinstance(patch, (bytes, bytearray, memoryview)):
        return bytes(patch)
    with open(patch, "rb") as f:
        return f.read()


class Runtime:
    """A backbone with named task patches; predictions use the active one.

    ``Runtime()`` loads the shipped int8 MobileNetV2; ``Runtime(model)`` an ONNX model (a path
    or bytes). Any number of threads may predict at once.
    """

    def __init__(self, model: Union[None, bytes, PathLike] = None, device: str = "cpu") -> None:
        data = None if model is None else _patch_bytes(model)
        self._rt = _native.Runtime(data)
        if device != "cpu":
            self._rt.set_device(device)

    def predict(self, images: np.ndarray, k: int = 5) -> Union[List[Prediction], List[List[Prediction]]]:
        """The top ``k`` classes, best first, of one image (a list) or of a batch (a list of lists)."""
        data, n, h, w, single = _images(images)
        out = [[Prediction(label, prob, index) for index, label, prob in top] for top in self._rt.classify(data, n, h, w, k)]
        return out[0] if single else out

    def predict_files(self, paths: Sequence[PathLike], k: int = 5) -> List[List[Prediction]]:
        """The top ``k`` classes of each JPEG or PNG file (decoded strictly; see ``set_max_pixels``)."""
        tops = self._rt.classify_files([os.fspath(p) for p in paths], k)
        return [[Prediction(label, prob, index) for index, label, prob in top] for top in tops]

    def load_patch(self, name: str, patch: Union[bytes, PathLike]) -> None:
        """Keeps a patch (file path or bytes) under ``name``, checked against the backbone."""
        if isinstance(patch, (bytes, bytearray, memoryview)):
            self._rt.load_patch(name, bytes(patch))
        else:
            self._rt.load_patch_file(name, os.fspath(patch))

    def unload(self, name: str) -> None:
        """Forgets patch ``name`` (the backbone alone becomes active if it was)."""
        self._rt.unload(name)

    def activate(self, name: Optional[str]) -> None:
        """Makes patch ``name`` active for predictions; ``None``: the backbone's own classes."""
        self._rt.activate(name)

    @property
    def active(self) -> Optional[str]:
        return self._rt.active

    @property
    def patches(self) -> List[str]:
        return self._rt.patches

    @property
    def labels(self) -> List[str]:
        """The class names predictions come in now."""
        return self._rt.labels

    @property
    def device(self) -> str:
        """Where predictions run: ``cpu`` or ``gpu (adapter)``."""
        return self._rt.device

    def set_device(self, device: str) -> None:
        """``auto``, ``cpu`` or ``gpu``; on a ``DeviceError`` nothing changes."""
        self._rt.set_device(device)


class Trainer:
    """Learns one task patch (``kinds``: ``logits``, ``sb+logits``, ``dw+logits``, ...) from
    labelled images over a runtime's frozen backbone.

    Options (``configure``): ``device``, ``batch``, ``optimizer`` (sgd, adam, rmsprop),
    ``augment``, ``validation``, ``weight_decay``, ``label_smoothing``, ``warmup``,
    ``clip_norm``, ``memory_budget`` (bytes), ``time_budget`` (seconds), ``checkpoint`` (path)
    with ``checkpoint_every`` and ``resume``. One call at a time; ``cancel`` from any thread.
    """

    def __init__(self, runtime: Runtime, kinds: str = "sb+logits", labels: Sequence[str] = (),
                 resolution: int = 224, **options: object) -> None:
        self._tr = _native.Trainer(runtime._rt, kinds, list(labels), resolution)
        if options:
            self.configure(**options)

    def configure(self, **options: object) -> None:
        """Changes options of the next fits; on a refusal (``ArgumentError``) nothing changes."""
        if "checkpoint" in options and options["checkpoint"] is not None:
            options["checkpoint"] = os.fspath(options["checkpoint"])  # type: ignore[arg-type]
        self._tr.configure(**options)

    @property
    def options(self) -> dict:
        return self._tr.options()

    @property
    def labels(self) -> List[str]:
        return self._tr.labels

    def add(self, images: np.ndarray, labels: Labels) -> None:
        """Adds training images (H×W×3 or N×H×W×3 uint8) with their label indices."""
        data, n, h, w, _ = _images(images)
        self._tr.add(data, n, h, w, _labels(labels, n))

    def add_test(self, images: np.ndarray, labels: Labels) -> None:
        """Adds test images for ``evaluate``."""
        data, n, h, w, _ = _images(images)
        self._tr.add_test(data, n, h, w, _labels(labels, n))

    def __len__(self) -> int:
        return len(self._tr)

    def fit(self, epochs: int = 3, lr: Optional[float] = None, seed: int = 0,
            callback: Optional[Callable[[Progress], Optional[bool]]] = None) -> FitResult:
        """Trains on the images added so far. ``callback(progress)`` runs after every step;
        returning ``False`` cancels (``CancelledError``), as does ``cancel()`` from another
        thread; Ctrl-C raises ``KeyboardInterrupt`` after the step. With a checkpoint set, the
        next ``fit`` resumes a cancelled one."""
        return FitResult(*self._tr.fit(epochs, lr, seed, callback))

    def cancel(self) -> None:
        """Stops a fit in progress after its step (any thread)."""
        self._tr.cancel()

    def patch_bytes(self) -> bytes:
        """The last fit's patch as patch-file bytes."""
        return self._tr.patch_bytes()

    def save(self, path: PathLike) -> None:
        """Writes the last fit's patch to ``path`` atomically."""
        self._tr.save(os.fspath(path))

    def evaluate(self) -> Evaluation:
        """The last fit's patch on the images given to ``add_test``."""
        acc, per_class = self._tr.evaluate()
        return Evaluation(acc, per_class)

    @property
    def device(self) -> str:
        """Where the last fit ran (``""`` before one)."""
        return self._tr.device


class Store:
    """A directory of named task patches; every change is atomic and checked."""

    def __init__(self, path: PathLike, create: bool = False) -> None:
        self._store = _native.Store(os.fspath(path), create)

    def names(self) -> List[str]:
        return self._store.names()

    def __len__(self) -> int:
        return len(self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def add(self, name: str, patch: Union[bytes, PathLike, Trainer]) -> None:
        """Adds (or replaces) task ``name``: patch bytes, a patch file or a trained ``Trainer``."""
        data = patch.patch_bytes() if isinstance(patch, Trainer) else _patch_bytes(patch)
        self._store.add(name, data)

    def get(self, name: str) -> bytes:
        return self._store.get(name)

    def remove(self, name: str) -> None:
        self._store.remove(name)

    def activate(self, runtime: Runtime, name: str) -> None:
        """Loads task ``name`` into ``runtime`` and makes it active."""
        self._store.activate(runtime._rt, name)
