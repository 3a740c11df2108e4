"""Per-image selections of a batch, packed side by side into one padded tensor.

The images of a batch select different numbers of values (the patches kept by the noise
estimate, the clipped values of SURE). Packing each image's selection to the front of its
row, in order, lets one batched operation work on all of them at once, on the selected
values only, in the order the image alone would have them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Packing"]


@dataclass(frozen=True)
class Packing:
    """The set values of each row of a ``(B, N)`` mask, packed to the front of a row of
    ``width`` (the most set in a row), in order.

    Attributes:
        image, column, slot: for every set value, ``(S,)``: its row, its column, and its
            column in the packed rows.
        index: the column of each packed value, ``(B, width)`` (0 past a row's count).
        valid: which packed values are set ones, ``(B, width)``.
    """

    image: Tensor
    column: Tensor
    slot: Tensor
    index: Tensor
    valid: Tensor

    @classmethod
    def of(cls, mask: Tensor) -> Packing:
        count = mask.sum(dim=1, keepdim=True)
        width = int(count.max()) if mask.numel() else 0
        image, column = mask.nonzero(as_tuple=True)
        slot = mask.cumsum(dim=1)[image, column] - 1
        index = torch.zeros(mask.shape[0], width, dtype=torch.long, device=mask.device)
        index[image, slot] = column
        valid = torch.arange(width, device=mask.device) < count
        return cls(image, column, slot, index, valid)

    def pack(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """The selected values of ``(B, ..., N)`` rows side by side, ``(B, ..., width)``
        (the selection along the last axis); the rest of each row is ``fill``."""
        shape = (values.shape[0], *[1] * (values.dim() - 2), self.index.shape[1])
        index = self.index.reshape(shape).expand(*values.shape[:-1], -1)
        return values.gather(-1, index).masked_fill_(~self.valid.reshape(shape), fill)

    def unpack(self, packed: Tensor, into: Tensor) -> Tensor:
        """``into`` ``(B, N)`` with the selected values replaced by ``packed``'s."""
        out = into.clone()
        out[self.image, self.column] = packed[self.image, self.slot]
        return out
