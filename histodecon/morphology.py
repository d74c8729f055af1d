"""Hand-crafted morphology features of H&E patches: a baseline encoder without weights.

Each RGB patch becomes a fixed-length vector (see :data:`FEATURE_NAMES`) computed with
scikit-image:

- stain statistics: colour deconvolution into hematoxylin, eosin and DAB (residual)
  optical densities with :func:`skimage.color.rgb2hed` (Ruifrok & Johnston 2001 stain
  vectors), then mean, standard deviation and the 10th, 50th and 90th percentiles of each;
- colour statistics: mean and standard deviation of red, green and blue in [0, 1];
- texture: grey-level co-occurrence (GLCM) properties at offsets of 1, 2 and 4 µm,
  averaged over four angles, and a histogram of uniform local binary patterns (LBP) on
  the 3 x 3 neighbourhood;
- nuclei: local maxima and connected components of the smoothed hematoxylin channel,
  reported per mm² of patch area, with area fraction and mean object area in µm².

Distances and areas are set in µm and converted with the µm/px of the images, so the
features keep their meaning when the patch scale changes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from skimage.color import rgb2gray, rgb2hed
from scipy import ndimage
from skimage.feature import graycomatrix, graycoprops
from skimage.filters import threshold_otsu

if TYPE_CHECKING:
    from histodecon.backbones import BackboneSpec

logger = logging.getLogger(__name__)

__all__ = ["FEATURE_NAMES", "MorphologyEncoder", "morphology_features"]

# Stain channels of rgb2hed, in its output order.
STAIN_NAMES = ("hematoxylin", "eosin", "dab")
STAIN_PERCENTILES = (10, 50, 90)

COLOUR_NAMES = ("red", "green", "blue")

# GLCM: grey levels after quantisation, pixel offsets in µm, and the four standard angles.
GLCM_LEVELS = 32
GLCM_DISTANCES_UM = (1.0, 2.0, 4.0)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")

# Rotation-invariant uniform LBP on the 8-neighbourhood (3 x 3 square, no interpolation):
# codes 0..8 count the neighbours >= the centre for patterns with at most two 0/1
# transitions around the circle, and code 9 collects all other patterns.
LBP_POINTS = 8
LBP_BINS = LBP_POINTS + 2
# Neighbour offsets (row, column) in circular order, starting east and turning clockwise.
LBP_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))

# Nucleus detection on the hematoxylin optical density of rgb2hed.
NUCLEUS_SMOOTHING_UM = 1.0  # Gaussian sigma that suppresses chromatin texture and JPEG noise
# NOTE: the threshold floor was chosen by eye on her2st crops (about 0.7 µm/px, scanned and
# stained in one lab). It keeps pale stroma and background out of the mask when Otsu's
# threshold of a nucleus-poor patch falls into the noise. Other stain batches may need another floor.
NUCLEUS_MIN_HEMATOXYLIN = 0.12
NUCLEUS_MIN_AREA_UM2 = 10.0  # smaller objects are debris or noise
NUCLEUS_MIN_DISTANCE_UM = 3.0  # about the radius of a small lymphocyte nucleus
UM2_PER_MM2 = 1e6

NUCLEUS_FEATURES = (
    "nuclei_per_mm2",  # local maxima of hematoxylin inside the mask, so touching nuclei count apart
    "nuclear_objects_per_mm2",  # connected components of the nuclear mask
    "nuclear_area_fraction",  # fraction of patch pixels inside the mask
    "nuclear_object_mean_area_um2",  # 0 when there is no object
    "nuclear_hematoxylin_mean",  # mean hematoxylin optical density inside the mask, 0 when empty
)


def _feature_names() -> tuple[str, ...]:
    names: list[str] = []
    for stain in STAIN_NAMES:
        names += [f"{stain}_mean", f"{stain}_std"]
        names += [f"{stain}_p{q:02d}" for q in STAIN_PERCENTILES]
    for colour in COLOUR_NAMES:
        names += [f"{colour}_mean", f"{colour}_std"]
    for distance in GLCM_DISTANCES_UM:
        names += [f"glcm_{prop.lower()}_{distance:g}um" for prop in GLCM_PROPERTIES]
    names += [f"lbp_uniform_{value:02d}" for value in range(LBP_BINS)]
    names += list(NUCLEUS_FEATURES)
    return tuple(names)


FEATURE_NAMES: tuple[str, ...] = _feature_names()
"""Names of the morphology features, in the order of the feature vector."""


def _stain_features(rgb: np.ndarray) -> tuple[list[float], np.ndarray]:
    """Return stain statistics and the hematoxylin channel, shape (H, W)."""
    hed = rgb2hed(rgb).astype(np.float32)
    # Channel-first copy, because reductions over contiguous rows are faster.
    pixels = np.ascontiguousarray(np.moveaxis(hed, -1, 0).reshape(len(STAIN_NAMES), -1))
    means, stds = pixels.mean(axis=1), pixels.std(axis=1)
    percentiles = np.percentile(pixels, STAIN_PERCENTILES, axis=1)
    values: list[float] = []
    for channel in range(len(STAIN_NAMES)):
        values += [float(means[channel]), float(stds[channel])]
        values += [float(v) for v in percentiles[:, channel]]
    return values, hed[..., 0]


def _colour_features(rgb: np.ndarray) -> list[float]:
    # Moments from 256-bin histograms are exact for uint8 and avoid strided float copies.
    levels = np.arange(256) / 255.0
    values: list[float] = []
    for channel in range(3):
        weights = np.bincount(rgb[..., channel].ravel(), minlength=256) / (rgb.shape[0] * rgb.shape[1])
        mean = float(weights @ levels)
        variance = float(weights @ (levels - mean) ** 2)
        values += [mean, variance**0.5]
    return values


def _texture_features(grey: np.ndarray, microns_per_pixel: float) -> list[float]:
    """Return GLCM properties per distance and the LBP histogram of a uint8 grey image."""
    quantised = (grey.astype(np.uint16) * GLCM_LEVELS // 256).astype(np.uint8)
    distances_px = [max(1, round(d / microns_per_pixel)) for d in GLCM_DISTANCES_UM]
    cooccurrence = graycomatrix(
        quantised, distances=distances_px, angles=GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True
    )
    values: list[float] = []
    per_property = {prop: graycoprops(cooccurrence, prop).mean(axis=1) for prop in GLCM_PROPERTIES}
    for distance_index in range(len(distances_px)):
        values += [float(per_property[prop][distance_index]) for prop in GLCM_PROPERTIES]

    codes = _uniform_lbp(grey)
    histogram = np.bincount(codes.ravel(), minlength=LBP_BINS)
    values += [float(v) for v in histogram / codes.size]
    return values


def _uniform_lbp(grey: np.ndarray) -> np.ndarray:
    """Return the uniform LBP code of each interior pixel, shape (H - 2, W - 2), values 0..9.

    Unlike :func:`skimage.feature.local_binary_pattern`, the diagonal neighbours are not
    interpolated, which makes this vectorised version faster.
    """
    height, width = grey.shape
    centre = grey[1:-1, 1:-1]
    bits = [grey[1 + dy : height - 1 + dy, 1 + dx : width - 1 + dx] >= centre for dy, dx in LBP_OFFSETS]
    ones = np.zeros(centre.shape, dtype=np.uint8)
    transitions = np.zeros(centre.shape, dtype=np.uint8)
    for index, bit in enumerate(bits):
        ones += bit
        transitions += bit != bits[index - 1]
    return np.where(transitions <= 2, ones, LBP_POINTS + 1)


def _nucleus_features(hematoxylin: np.ndarray, microns_per_pixel: float) -> list[float]:
    """Return the :data:`NUCLEUS_FEATURES` of a hematoxylin optical-density image."""
    smoothed = ndimage.gaussian_filter(hematoxylin, sigma=NUCLEUS_SMOOTHING_UM / microns_per_pixel)
    threshold = NUCLEUS_MIN_HEMATOXYLIN
    if smoothed.max() > smoothed.min():
        threshold = max(threshold, float(threshold_otsu(smoothed)))
    mask = smoothed > threshold

    # Drop components below the minimum nuclear area before counting anything.
    labels, n_components = ndimage.label(mask)
    pixel_area_um2 = microns_per_pixel**2
    areas_um2 = np.bincount(labels.ravel(), minlength=n_components + 1) * pixel_area_um2
    is_kept = areas_um2 >= NUCLEUS_MIN_AREA_UM2
    is_kept[0] = False  # background label
    mask = is_kept[labels]
    object_areas = areas_um2[is_kept]

    # A nucleus centre is a maximum of the smoothed hematoxylin within a square window of
    # side 2 x NUCLEUS_MIN_DISTANCE_UM, so centres closer than that merge.
    window_px = 2 * max(1, round(NUCLEUS_MIN_DISTANCE_UM / microns_per_pixel)) + 1
    in_mask = np.where(mask, smoothed, 0.0)
    is_peak = mask & (in_mask == ndimage.maximum_filter(in_mask, size=window_px, mode="constant"))
    n_peaks = int(is_peak.sum())

    patch_area_mm2 = hematoxylin.size * pixel_area_um2 / UM2_PER_MM2
    return [
        n_peaks / patch_area_mm2,
        len(object_areas) / patch_area_mm2,
        float(mask.mean()),
        float(object_areas.mean()) if len(object_areas) else 0.0,
        float(hematoxylin[mask].mean()) if mask.any() else 0.0,
    ]


def morphology_features(rgb: np.ndarray, *, microns_per_pixel: float) -> np.ndarray:
    """Compute the morphology feature vector of one RGB patch.

    Parameters
    ----------
    rgb
        uint8 image, shape (H, W, 3), RGB.
    microns_per_pixel
        Pixel size of ``rgb`` in µm/px. It converts the µm distances of texture and nucleus
        detection to pixels, and areas to µm² and mm².

    Returns
    -------
    numpy.ndarray
        float64, shape (len(FEATURE_NAMES),), in the order of :data:`FEATURE_NAMES`.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image of shape (H, W, 3), got {rgb.dtype} with shape {rgb.shape}")
    if not microns_per_pixel > 0:
        raise ValueError(f"microns_per_pixel must be positive, got {microns_per_pixel!r}")

    stain_values, hematoxylin = _stain_features(rgb)
    grey = (rgb2gray(rgb) * 255).round().astype(np.uint8)
    values = (
        stain_values
        + _colour_features(rgb)
        + _texture_features(grey, microns_per_pixel)
        + _nucleus_features(hematoxylin, microns_per_pixel)
    )
    return np.asarray(values, dtype=np.float64)


class MorphologyEncoder:
    """Encoder that maps uint8 RGB patches to :data:`FEATURE_NAMES`, computed on the CPU.

    It follows the interface of the network encoders in :mod:`histodecon.backbones`
    (``encode``, ``to``, ``eval``), so the embedding stage treats both alike.

    Parameters
    ----------
    spec
        Registry record of the ``morphology`` backbone. ``spec.input_px`` is the patch size
        that images are resized to before the features are computed.
    """

    weights_source = "none (hand-crafted features)"

    def __init__(self, spec: BackboneSpec) -> None:
        if spec.embedding_dim != len(FEATURE_NAMES):
            raise ValueError(
                f"backbone {spec.name!r} declares embedding_dim={spec.embedding_dim}, but the morphology "
                f"encoder computes {len(FEATURE_NAMES)} features. Set embedding_dim={len(FEATURE_NAMES)} in its registry entry."
            )
        self.spec = spec
        self.feature_names = FEATURE_NAMES

    def to(self, device: torch.device | str) -> MorphologyEncoder:
        """Return ``self``: the features are computed with scikit-image on the CPU."""
        return self

    def eval(self) -> MorphologyEncoder:
        """Return ``self``: there is no training mode."""
        return self

    def encode(self, images: torch.Tensor, *, microns_per_pixel: float) -> torch.Tensor:
        """Compute the features of a batch of patches.

        Parameters
        ----------
        images
            uint8 tensor, shape (n, P, P, 3), RGB, on any device.
        microns_per_pixel
            Pixel size of ``images`` in µm/px. When P differs from ``spec.input_px`` the
            patches are resized first and the pixel size scales by P / input_px.

        Returns
        -------
        torch.Tensor
            float32 on the CPU, shape (n, len(FEATURE_NAMES)).
        """
        # Imported here because histodecon.backbones imports this module.
        from histodecon.backbones import resize_patches

        patch_px = images.shape[1]
        resized = resize_patches(images.cpu(), size=self.spec.input_px)
        batch = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        scaled_mpp = microns_per_pixel * patch_px / self.spec.input_px
        rows = [morphology_features(patch, microns_per_pixel=scaled_mpp) for patch in batch]
        features = np.stack(rows) if rows else np.empty((0, len(FEATURE_NAMES)))
        return torch.from_numpy(features.astype(np.float32))
