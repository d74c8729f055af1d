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

__all__ = ["Slide", "PlainImageSlide", "OpenSlideSlide", "open_slide", "SlideReadError"]

# her2st JPEGs are about 92 megapixels, above PIL's decompression-bomb guard of 89 megapixels.
# Inputs come from the user's own sample sheet, so the guard only gets in the way.
Image.MAX_IMAGE_PIXELS = None

PAD_VALUE = 255  # white, the colour of glass in a brightfield scan
PLAIN_SUFFIXES = {".jpg", ".jpeg", ".png"}
TIFF_SUFFIXES = {".tif", ".tiff"}


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
    def _read_region(self, x0: int, y0: int, width: int, height: int, downsample: float) -> np.ndarray:
        """Read an in-bounds integer box at the level closest below ``downsample``.

        Returns an RGB uint8 array of the box at that level's resolution.
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
        downsample = max((x1 - x0) / out_px, 1.0)
        # Integer window that covers the box, clipped to the image.
        ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
        ix1, iy1 = int(np.ceil(x1)), int(np.ceil(y1))
        padded = ix0 < 0 or iy0 < 0 or ix1 > width or iy1 > height
        cx0, cy0 = max(ix0, 0), max(iy0, 0)
        cx1, cy1 = min(ix1, width), min(iy1, height)

        canvas_scale, region = 1.0, None
        if cx1 > cx0 and cy1 > cy0:
            region = self._read_region(cx0, cy0, cx1 - cx0, cy1 - cy0, downsample)
            canvas_scale = region.shape[1] / (cx1 - cx0)
        canvas_w = max(int(round((ix1 - ix0) * canvas_scale)), 1)
        canvas_h = max(int(round((iy1 - iy0) * canvas_scale)), 1)
        canvas = np.full((canvas_h, canvas_w, 3), PAD_VALUE, dtype=np.uint8)
        if region is not None:
            ox = int(round((cx0 - ix0) * canvas_scale))
            oy = int(round((cy0 - iy0) * canvas_scale))
            h = min(region.shape[0], canvas_h - oy)
            w = min(region.shape[1], canvas_w - ox)
            canvas[oy : oy + h, ox : ox + w] = region[:h, :w]

        # The fractional box relative to the canvas; PIL's resize samples exactly this box.
        fine_box = (
            (x0 - ix0) * canvas_scale,
            (y0 - iy0) * canvas_scale,
            (x1 - ix0) * canvas_scale,
            (y1 - iy0) * canvas_scale,
        )
        patch = Image.fromarray(canvas).resize((out_px, out_px), Image.Resampling.LANCZOS, box=fine_box)
        return np.asarray(patch, dtype=np.uint8), padded

    def thumbnail(self, max_px: int) -> tuple[np.ndarray, float]:
        """Return an RGB thumbnail whose longer side is at most ``max_px``, and its scale.

        The scale is thumbnail pixels per full-resolution pixel.
        """
        width, height = self.dimensions
        scale = min(1.0, max_px / max(width, height))
        out_w, out_h = max(int(round(width * scale)), 1), max(int(round(height * scale)), 1)
        region = self._read_region(0, 0, width, height, 1.0 / scale)
        thumb = Image.fromarray(region).resize((out_w, out_h), Image.Resampling.LANCZOS)
        return np.asarray(thumb, dtype=np.uint8), out_w / width


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
            page = tif.pages[0]
            array = page.asarray()
            unit = page.tags.get("ResolutionUnit")
            xres = page.tags.get("XResolution")
            if unit is not None and xres is not None and int(unit.value) == 3:  # pixels per cm
                numerator, denominator = xres.value
                if numerator > 0:
                    self._mpp = 1e4 * denominator / numerator
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        return np.ascontiguousarray(array[..., :3]).astype(np.uint8, copy=False)

    @property
    def dimensions(self) -> tuple[int, int]:
        return int(self._array.shape[1]), int(self._array.shape[0])

    @property
    def microns_per_pixel(self) -> float | None:
        return self._mpp

    def _read_region(self, x0: int, y0: int, width: int, height: int, downsample: float) -> np.ndarray:
        return self._array[y0 : y0 + height, x0 : x0 + width]


class OpenSlideSlide(Slide):
    """A scanner file or tiled TIFF pyramid read lazily through OpenSlide.

    NOTE: no test opens a pyramid yet; the tests exercise the plain-image reader only.
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
        value = self._slide.properties.get("openslide.mpp-x")
        return float(value) if value else None

    def _read_region(self, x0: int, y0: int, width: int, height: int, downsample: float) -> np.ndarray:
        level = self._slide.get_best_level_for_downsample(downsample)
        level_downsample = self._slide.level_downsamples[level]
        size = (max(int(round(width / level_downsample)), 1), max(int(round(height / level_downsample)), 1))
        region = self._slide.read_region((x0, y0), level, size)
        # Transparent pixels (outside the scanned area) become white, not black.
        background = Image.new("RGB", region.size, (PAD_VALUE,) * 3)
        background.paste(region, mask=region.getchannel("A"))
        return np.asarray(background)


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
