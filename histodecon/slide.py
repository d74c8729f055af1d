"""One interface over H&E images: scanner formats through OpenSlide, plain images otherwise.

OpenSlide reads tiled TIFF pyramids and scanner formats (SVS, NDPI, MRXS, ...) but not JPEG,
PNG or strip TIFF, so those are decoded once into memory with PIL or tifffile. Both readers
implement :meth:`Slide.read_box`, which cuts a box given in full-resolution pixels
(x = column, y = row) and resamples it to a requested output size, padding with white where
the box leaves the image.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["Slide", "PlainImageSlide", "OpenSlideSlide", "open_slide", "SlideReadError", "mpp_from_resolution"]

# her2st JPEGs are about 92 megapixels, above PIL's decompression-bomb guard of 89 megapixels.
# Inputs come from the user's own sample sheet, so the guard only gets in the way.
Image.MAX_IMAGE_PIXELS = None

PAD_VALUE = 255  # white, the colour of glass in a brightfield scan
PLAIN_SUFFIXES = {".jpg", ".jpeg", ".png"}
TIFF_SUFFIXES = {".tif", ".tiff"}
# Pixel sizes a brightfield scan can have. Resolution tags outside this range are software
# defaults (72 or 300 dpi is 353 or 85 µm/px), not a measurement, and are ignored.
PLAUSIBLE_MPP = (0.05, 20.0)
MICRONS_PER_UNIT = {2: 25_400.0, 3: 10_000.0}  # TIFF ResolutionUnit: 2 = inch, 3 = centimetre
ANISOTROPY_TOLERANCE = 0.02
LANCZOS_SUPPORT = 3  # kernel radius of PIL's LANCZOS filter, in output pixels  # largest relative x/y pixel size difference accepted


def mpp_from_resolution(x_resolution: float, y_resolution: float | None, unit: int | None, *, path: Path) -> float | None:
    """Convert TIFF resolution tags (pixels per unit) to µm per pixel, or None when unusable.

    Raises :class:`SlideReadError` when x and y pixel sizes differ, which patches (square in
    µm) cannot honour.
    """
    if unit not in MICRONS_PER_UNIT or not x_resolution or x_resolution <= 0:
        return None
    mpp_x = MICRONS_PER_UNIT[unit] / x_resolution
    mpp_y = MICRONS_PER_UNIT[unit] / y_resolution if y_resolution and y_resolution > 0 else mpp_x
    return _checked_mpp(mpp_x, mpp_y, path=path, what="TIFF resolution tags")


def _checked_mpp(mpp_x: float, mpp_y: float, *, path: Path, what: str) -> float | None:
    if abs(mpp_x - mpp_y) > ANISOTROPY_TOLERANCE * max(mpp_x, mpp_y):
        raise SlideReadError(
            f"image {path}: {what} give {mpp_x:.4f} µm/px in x but {mpp_y:.4f} µm/px in y; histodecon needs "
            "square pixels. Resample the image to square pixels, or fill microns_per_pixel in the sample sheet "
            "if the metadata are wrong."
        )
    if not PLAUSIBLE_MPP[0] <= mpp_x <= PLAUSIBLE_MPP[1]:
        logger.warning(
            "image %s: %s give %.4g µm/px, outside %s for a brightfield scan; ignored as a software default",
            path, what, mpp_x, PLAUSIBLE_MPP,
        )
        return None
    return float(mpp_x)


class SlideReadError(RuntimeError):
    """An image file that is missing, unreadable or truncated."""


class Slide(ABC):
    """A full-resolution H&E image, read by boxes in full-resolution pixel coordinates."""

    path: Path

    @property
    @abstractmethod
    def dimensions(self) -> tuple[int, int]:
        """Width and height of the full-resolution image, in pixels."""

    @property
    def microns_per_pixel(self) -> float | None:
        """µm per full-resolution pixel from the file's metadata, or None when absent."""
        return None

    @abstractmethod
    def _read_window(
        self, box: tuple[float, float, float, float], downsample: float, *, margin: bool = True
    ) -> tuple[np.ndarray, float, float, float]:
        """Read pixels covering ``box`` from the level with the largest downsample <= ``downsample``.

        With ``margin``, the region extends :func:`resampling_margin` pixels beyond the box.

        Returns
        -------
        region
            RGB uint8 array covering the box; parts outside the image are white.
        origin_x, origin_y
            Full-resolution coordinates of the region's top-left corner.
        scale
            Region pixels per full-resolution pixel.
        """

    def read_box(self, box: tuple[float, float, float, float], out_px: int) -> tuple[np.ndarray, bool]:
        """Cut ``box`` and resample it to an ``out_px`` x ``out_px`` RGB patch.

        Parameters
        ----------
        box
            ``(x0, y0, x1, y1)`` in full-resolution pixels; fractional values are honoured,
            so a patch stays centred on a spot centre that falls between pixels.
        out_px
            Side of the returned square patch in pixels.

        Returns
        -------
        patch
            uint8 array of shape ``(out_px, out_px, 3)``.
        padded
            True when part of the box lies outside the image (that part is white).
        """
        x0, y0, x1, y1 = box
        width, height = self.dimensions
        padded = x0 < 0 or y0 < 0 or x1 > width or y1 > height
        region, origin_x, origin_y, scale = self._read_window(box, max((x1 - x0) / out_px, 1.0))
        # The fractional box relative to the region; PIL's resize samples exactly this box.
        fine_box = ((x0 - origin_x) * scale, (y0 - origin_y) * scale, (x1 - origin_x) * scale, (y1 - origin_y) * scale)
        patch = Image.fromarray(region).resize((out_px, out_px), Image.Resampling.LANCZOS, box=fine_box)
        return np.asarray(patch, dtype=np.uint8), padded

    def thumbnail(self, max_px: int) -> tuple[np.ndarray, float]:
        """Return an RGB thumbnail whose longer side is at most ``max_px``, and its scale.

        The scale is thumbnail pixels per full-resolution pixel.
        """
        width, height = self.dimensions
        scale = min(1.0, max_px / max(width, height))
        out_w, out_h = max(int(round(width * scale)), 1), max(int(round(height * scale)), 1)
        # No margin: the whole image needs no neighbours, and a margin would copy it whole.
        region, origin_x, origin_y, region_scale = self._read_window((0, 0, width, height), 1.0 / scale, margin=False)
        left, top = int(round(-origin_x * region_scale)), int(round(-origin_y * region_scale))
        visible = region[top : top + max(int(round(height * region_scale)), 1), left : left + max(int(round(width * region_scale)), 1)]
        thumb = Image.fromarray(np.ascontiguousarray(visible)).resize((out_w, out_h), Image.Resampling.LANCZOS)
        return np.asarray(thumb, dtype=np.uint8), out_w / width


def resampling_margin(downsample: float) -> int:
    """Return the pixels to read around a box, so the Lanczos kernel samples the image and not the window's edge.

    Lanczos-3 reaches 3 output pixels, that is ``3 * downsample`` input pixels, on each side.
    One more pixel absorbs the rounding of a non-integer level downsample.
    """
    return int(np.ceil(LANCZOS_SUPPORT * max(downsample, 1.0))) + 1


def _padded_window(array: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Return ``array[y0:y1, x0:x1]`` with the parts outside the array filled with white."""
    height, width = array.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
        return array[y0:y1, x0:x1]
    window = np.full((max(y1 - y0, 1), max(x1 - x0, 1), 3), PAD_VALUE, dtype=np.uint8)
    if cx1 > cx0 and cy1 > cy0:
        window[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = array[cy0:cy1, cx0:cx1]
    return window


class PlainImageSlide(Slide):
    """JPEG, PNG or strip TIFF decoded once into memory (OpenSlide cannot open these)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._mpp: float | None = None
        try:
            if self.path.suffix.lower() in TIFF_SUFFIXES:
                self._array = self._read_tiff()
            else:
                with Image.open(self.path) as image:
                    image.load()
                    self._array = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as error:
            raise SlideReadError(
                f"cannot read image {self.path}: {error}. Check that the file is a complete "
                "JPEG, PNG or TIFF (re-export or re-download it) and that the sample sheet points to it."
            ) from error
        logger.debug("decoded %s: %d x %d px", self.path, *self.dimensions)

    def _read_tiff(self) -> np.ndarray:
        import tifffile

        with tifffile.TiffFile(self.path) as tif:
            if not len(tif.pages):
                raise ValueError("the TIFF contains no image")
            page = tif.pages.first
            array = page.asarray()
            unit, xres, yres = (page.tags.get(name) for name in ("ResolutionUnit", "XResolution", "YResolution"))
            if unit is not None and xres is not None:
                self._mpp = mpp_from_resolution(
                    _rational(xres.value), _rational(yres.value) if yres is not None else None, int(unit.value), path=self.path
                )
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        return np.ascontiguousarray(array[..., :3]).astype(np.uint8, copy=False)

    @property
    def dimensions(self) -> tuple[int, int]:
        return int(self._array.shape[1]), int(self._array.shape[0])

    @property
    def microns_per_pixel(self) -> float | None:
        return self._mpp

    def _read_window(
        self, box: tuple[float, float, float, float], downsample: float, *, margin: bool = True
    ) -> tuple[np.ndarray, float, float, float]:
        pad = resampling_margin(downsample) if margin else 0
        x0, y0 = int(np.floor(box[0])) - pad, int(np.floor(box[1])) - pad
        x1, y1 = int(np.ceil(box[2])) + pad, int(np.ceil(box[3])) + pad
        return _padded_window(self._array, x0, y0, x1, y1), float(x0), float(y0), 1.0


def _rational(value) -> float:
    """Return a TIFF RATIONAL tag value (numerator, denominator) as a float."""
    numerator, denominator = value
    return numerator / denominator if denominator else 0.0


class OpenSlideSlide(Slide):
    """A scanner file or tiled TIFF pyramid read lazily through OpenSlide.

    Boxes are read from the pyramid level with the largest downsample not above the one
    requested, then resampled, so a patch never comes from a coarser level than it needs.
    """

    def __init__(self, path: str | Path):
        import openslide

        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError) as error:
            raise SlideReadError(
                f"OpenSlide cannot open {self.path}: {error}. Check that the file is complete; "
                "JPEG, PNG and strip TIFF are read without OpenSlide."
            ) from error

    @property
    def dimensions(self) -> tuple[int, int]:
        return tuple(int(v) for v in self._slide.dimensions)

    @property
    def microns_per_pixel(self) -> float | None:
        """``openslide.mpp-x``/``-y`` of a scanner format, else the TIFF resolution tags."""
        properties = self._slide.properties
        if properties.get("openslide.mpp-x"):
            mpp_x = float(properties["openslide.mpp-x"])
            mpp_y = float(properties.get("openslide.mpp-y") or mpp_x)
            return _checked_mpp(mpp_x, mpp_y, path=self.path, what="openslide.mpp-x/-y")
        unit = {"inch": 2, "centimeter": 3}.get(str(properties.get("tiff.ResolutionUnit", "")).lower())
        x_resolution = properties.get("tiff.XResolution")
        if unit is None or not x_resolution:
            return None
        y_resolution = properties.get("tiff.YResolution")
        return mpp_from_resolution(float(x_resolution), float(y_resolution) if y_resolution else None, unit, path=self.path)

    def _read_window(
        self, box: tuple[float, float, float, float], downsample: float, *, margin: bool = True
    ) -> tuple[np.ndarray, float, float, float]:
        level = self._slide.get_best_level_for_downsample(downsample)
        level_downsample = float(self._slide.level_downsamples[level])
        # Window on the level's own pixel grid, with the resampling margin around the box.
        pad = resampling_margin(downsample / level_downsample) if margin else 0
        lx0, ly0 = int(np.floor(box[0] / level_downsample)) - pad, int(np.floor(box[1] / level_downsample)) - pad
        lx1, ly1 = int(np.ceil(box[2] / level_downsample)) + pad, int(np.ceil(box[3] / level_downsample)) + pad
        origin_x, origin_y = lx0 * level_downsample, ly0 * level_downsample
        location = (int(round(origin_x)), int(round(origin_y)))
        region = self._slide.read_region(location, level, (max(lx1 - lx0, 1), max(ly1 - ly0, 1)))
        # Transparent pixels (outside the image or the scanned area) become white, not black.
        background = Image.new("RGB", region.size, (PAD_VALUE,) * 3)
        background.paste(region, mask=region.getchannel("A"))
        return np.asarray(background), float(location[0]), float(location[1]), 1.0 / level_downsample


def open_slide(path: str | Path) -> Slide:
    """Open an H&E image with the reader its format needs.

    JPEG and PNG go to :class:`PlainImageSlide`. Other files, TIFF included, go to OpenSlide
    first; a TIFF that OpenSlide rejects (a strip TIFF) is decoded with tifffile.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideReadError(f"image file not found: {path}. Fix the `image` column of the sample sheet.")
    suffix = path.suffix.lower()
    if suffix in PLAIN_SUFFIXES:
        return PlainImageSlide(path)
    try:
        return OpenSlideSlide(path)
    except (SlideReadError, ImportError) as error:
        if suffix in TIFF_SUFFIXES:
            logger.info("OpenSlide cannot read %s (%s); reading it as a plain TIFF", path, error)
            return PlainImageSlide(path)
        raise
