"""Per-image selections of a batch, packed side by side into one padded tensor.

The images of a batch select different numbers of values (the patches kept by the noise
estimate, the clipped values of SURE). Packing each image's selection to the front of its
row, in order, lets one batched operation work on all of them at once, on the selected
values only, with the same values in the same order as for the image alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["Packing"]


@dataclass(frozen=True)
class Packing:
    """Where the set values of each row of a ``(B, N)`` mask go when every row's set
    values are packed to the front of a ``(B, width)`` row, in order.

    Attributes:
        image, index: the row and column of every set value, ``(S,)``.
        slot: its column in the packed rows, ``(S,)``.
        width: the most values set in a row.
    """

    image: Tensor
    index: Tensor
    slot: Tensor
    width: int

    @classmethod
    def of(cls, mask: Tensor) -> Packing:
        image, index = mask.nonzero(as_tuple=True)
        slot = mask.cumsum(dim=1)[image, index] - 1
        width = int(mask.sum(dim=1).max()) if mask.numel() else 0
        return cls(image, index, slot, width)

    def pack(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """The selected values of ``(B, N)`` rows side by side, ``(B, width)``; the rest of
        each row is ``fill``."""
        packed = values.new_full((values.shape[0], self.width), fill)
        packed[self.image, self.slot] = values[self.image, self.index]
        return packed

    def pack_columns(self, values: Tensor) -> Tensor:
        """The same for ``(B, D, N)`` columns: ``(B, D, width)``, zero after each row's."""
        packed = values.new_zeros((values.shape[0], values.shape[1], self.width))
        packed[self.image, :, self.slot] = values[self.image, :, self.index]
        return packed

    def unpack(self, packed: Tensor) -> Tensor:
        """The packed values back in the order of ``image`` and ``index``, ``(S,)``."""
        return packed[self.image, self.slot]
