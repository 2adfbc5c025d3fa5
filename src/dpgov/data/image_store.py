"""Image files read from disk, one image at a time: decoding (PNG, JPEG with Pillow; DICOM with
pydicom), the transforms a contract declares, and a lazy array of images (:class:`DiskImages`)
that training reads in batches, so a dataset never needs to fit in memory.

A decoded image is float32 (C, H, W) in [0, 1] before normalisation: 8-bit PNG/JPEG divided by
255, 16-bit PNG by 65,535, DICOM after its modality LUT (rescale slope/intercept) scaled by the
image's own minimum and maximum (MONOCHROME1 inverted, so bright is dense everywhere). Then, in
this order: convert to the declared channels (1: grayscale "L", 3: RGB), resize (an int: the
shorter side to that many pixels, aspect kept, as torchvision's ``Resize(int)``; a pair: exactly
[H, W]), centre crop ([H, W]), normalise per channel ``(x - mean) / std``. Augmentation
(``hflip``) is per example: each image is flipped or not on its own draw, so one patient's
records never change another's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dpgov.errors import UsageError

PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_FILE_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES


@dataclass(frozen=True)
class Transform:
    """What every image goes through before the model sees it (meta.json keeps it)."""

    channels: int = 1  # 1 grayscale, 3 RGB
    resize: tuple[int, ...] | None = None  # (n,): shorter side; (h, w): exact
    center_crop: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    hflip: bool = False  # per-example augmentation, training only

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Transform:
        def tup(v: Any) -> Any:
            return None if v is None else tuple(v)

        return cls(
            channels=int(d.get("channels", 1)),
            resize=tup(d.get("resize")),
            center_crop=tup(d.get("center_crop")),
            mean=tuple(float(v) for v in d.get("mean", (0.0,))),
            std=tuple(float(v) for v in d.get("std", (1.0,))),
            hflip=bool(d.get("hflip", False)),
        )

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, H, W) of an image of ``height`` × ``width`` after this transform."""
        h, w = height, width
        if self.resize is not None:
            h, w = _resized(h, w, self.resize)
        if self.center_crop is not None:
            h, w = self.center_crop
        return (self.channels, int(h), int(w))


def _resized(h: int, w: int, size: tuple[int, ...]) -> tuple[int, int]:
    if len(size) == 2:
        return int(size[0]), int(size[1])
    n = int(size[0])
    if h <= w:
        return n, max(1, round(w * n / h))
    return max(1, round(h * n / w)), n


def open_image(path: Path) -> Any:
    """The file as a Pillow image (PNG/JPEG, or DICOM through pydicom). Unreadable or
    undecodable files raise UsageError naming the file."""
    suffix = path.suffix.lower()
    try:
        if suffix in DICOM_SUFFIXES:
            return _dicom_image(path)
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            return im.copy() if im.mode not in ("I;16", "I;16B", "I") else _wide(im)
    except UsageError:
        raise
    except Exception as err:  # PIL.UnidentifiedImageError, OSError, pydicom errors
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"image {path}: cannot decode ({first})") from err


def _wide(im: Any) -> Any:
    """16-bit grayscale → a float image in [0, 1] (mode "F")."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(im, dtype=np.float32) / np.float32(65535.0)
    return Image.fromarray(arr, mode="F")


def _dicom_image(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut
    except ImportError as err:
        raise UsageError(
            f"image {path}: DICOM needs pydicom (pip install 'dpgov[imaging]')"
        ) from err
    ds = pydicom.dcmread(path)
    arr = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        arr = arr[0]  # a multi-frame file: its first frame
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = 1.0 - arr
    if arr.ndim == 3:
        return Image.fromarray((arr[..., :3] * 255).round().astype(np.uint8), mode="RGB")
    return Image.fromarray(arr.astype(np.float32), mode="F")


def apply_transform(im: Any, t: Transform, *, flip: bool = False) -> Any:
    """A Pillow image → float32 (C, H, W) per ``t`` (module docstring: the order)."""
    import numpy as np
    from PIL import Image

    if im.mode == "F":  # float in [0, 1]: DICOM, 16-bit PNG
        bands = [im] * 3 if t.channels == 3 else [im]
        scale = 1.0
    else:
        im = im.convert("L" if t.channels == 1 else "RGB")
        bands = list(im.split())
        scale = 1.0 / 255.0
    out = []
    for band in bands:
        if t.resize is not None:
            h, w = _resized(band.height, band.width, t.resize)
            band = band.resize((w, h), Image.Resampling.BILINEAR)
        if t.center_crop is not None:
            ch, cw = t.center_crop
            left = round((band.width - cw) / 2.0)
            top = round((band.height - ch) / 2.0)
            band = band.crop((left, top, left + cw, top + ch))
        out.append(np.asarray(band, dtype=np.float32) * np.float32(scale))
    x = np.stack(out, axis=0)
    if flip:
        x = x[:, :, ::-1]
    mean = np.asarray(t.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(t.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def load_image(path: Path, t: Transform, *, flip: bool = False) -> Any:
    return apply_transform(open_image(path), t, flip=flip)


class DiskImages:
    """A lazy (N, C, H, W) float32 array of image files: ``x[i]`` and ``x[a:b]`` decode those
    images only; ``x[mask]`` / ``x[indices]`` give another lazy array (a subset, nothing read);
    :meth:`torch_dataset` is a map-style dataset reading one file per index, which Opacus's
    Poisson sampler draws batches from."""

    def __init__(self, root: Path, files: Any, transform: Transform, shape: tuple[int, ...]):
        import numpy as np

        self.root = Path(root)
        self.files = np.asarray(files, dtype=object)
        self.transform = transform
        self.image_shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype("float32")

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), *self.image_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.image_shape)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int, *, flip: bool = False) -> Any:
        x = load_image(self.root / str(self.files[i]), self.transform, flip=flip)
        if x.shape != self.image_shape:
            raise UsageError(
                f"image {self.files[i]}: shape {list(x.shape)} after the transform, expected "
                f"{list(self.image_shape)} (give resize and center_crop so every image matches)"
            )
        return x

    def __getitem__(self, key: Any) -> Any:
        import numpy as np

        if isinstance(key, (int, np.integer)):
            return self.read(int(key))
        if isinstance(key, slice):
            idx = range(*key.indices(len(self)))
            out = np.empty((len(idx), *self.image_shape), dtype=np.float32)
            for j, i in enumerate(idx):
                out[j] = self.read(i)
            return out
        return DiskImages(self.root, self.files[np.asarray(key)], self.transform, self.image_shape)

    def torch_dataset(self, y: Any, *, augment: bool = True) -> Any:
        """(image, label) pairs read from disk per index; ``hflip`` draws per example."""
        return _image_dataset(self, y, augment=augment and self.transform.hflip)


def _image_dataset(images: DiskImages, y: Any, *, augment: bool) -> Any:
    import numpy as np
    import torch
    from torch.utils.data import Dataset

    labels = torch.as_tensor(np.asarray(y), dtype=torch.float32)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images, {len(labels)} labels")

    class ImageFiles(Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int) -> tuple[Any, Any]:
            flip = augment and bool(torch.randint(0, 2, (1,)).item())
            return torch.from_numpy(images.read(int(i), flip=flip)), labels[i]

    return ImageFiles()
