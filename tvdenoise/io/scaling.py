"""How a file's samples map to the [0, 1] scale the solver works on, and back.

The rule, by dtype (:meth:`Scaling.for_samples`):

* ``uint8`` and ``uint16``: the dtype's full range, ``value / 255`` or ``value / 65535``.
  The same number then means the same in every file of a series, and a 12-bit camera
  image in a 16-bit file keeps its place in the range (its ``--sigma`` is relative to
  65535, as for any 16-bit file).
* everything else (``int8``, ``int16``, ``int32``, ``uint32``, 64-bit integers,
  ``float16/32/64``): the file's own range, ``(value - min) / (max - min)`` over its finite
  values (NaN and infinities do not count). A float32 image of photon counts, or an int16
  CT volume in Hounsfield units, then fills [0, 1] wherever its values lie. A constant
  image maps to 0.
* ``bool`` (1-bit): 0 and 1.

Mapping back (:meth:`Scaling.from_unit`) inverts the same affine map in float64 and casts
to the file's dtype, rounding and clipping to the dtype's range for integers, so that a
float32 file comes back float32 in its own units, and an unchanged value comes back as it
went in (exactly for integers, to float rounding for floats).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Scaling"]

_FULL_RANGE_DTYPES = frozenset({np.dtype(np.uint8), np.dtype(np.uint16)})


@dataclass(frozen=True)
class Scaling:
    """The affine map ``unit = (sample - offset) / scale`` of one file's samples.

    Attributes:
        offset: The sample value that maps to 0.
        scale: The sample distance that maps to 1 (> 0).
        dtype: The dtype of the samples, restored by :meth:`from_unit`.
    """

    offset: float
    scale: float
    dtype: np.dtype[Any]

    @classmethod
    def for_samples(cls, samples: npt.NDArray[Any]) -> Scaling:
        """The scaling rule of the module notes for these samples.

        Raises:
            TypeError: The samples are not numbers (complex, strings, objects).
        """
        dtype = samples.dtype
        if dtype == np.bool_:
            return cls(0.0, 1.0, dtype)
        if dtype.kind not in "uif":
            raise TypeError(f"samples must be integers or floats, got dtype {dtype}")
        if dtype in _FULL_RANGE_DTYPES:
            return cls(0.0, float(np.iinfo(dtype).max), dtype)
        if dtype.kind == "f":
            finite = np.isfinite(samples)
            if not finite.all():
                samples = samples[finite]
        if samples.size == 0:
            return cls(0.0, 1.0, dtype)
        low, high = float(samples.min()), float(samples.max())
        return cls(low, high - low if high > low else 1.0, dtype)

    def to_unit(self, samples: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """The samples on the [0, 1] scale as float32; non-finite values stay non-finite."""
        if samples.dtype.itemsize <= 2 or samples.dtype == np.bool_:
            values = samples.astype(np.float32)  # exact for 8- and 16-bit samples
            if self.offset:
                values -= np.float32(self.offset)
            values /= np.float32(self.scale)
            return values
        wide = (samples.astype(np.float64) - self.offset) / self.scale
        return wide.astype(np.float32)

    def from_unit(self, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Values on the [0, 1] scale back in the samples' units and dtype."""
        wide = values.astype(np.float64) * self.scale + self.offset
        if self.dtype == np.bool_:
            return np.asarray(wide >= 0.5)
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            return np.clip(np.rint(wide), info.min, info.max).astype(self.dtype)
        return wide.astype(self.dtype)
