"""The library's public edge: NumPy arrays, channel layouts and integer images in and out.

The mathematics works on ``(B, C, *spatial)`` float tensors with values on [0, 1]. Callers
have photographs as ``(H, W, 3)`` uint8 arrays, 16-bit microscopy stacks, ``(C, H, W)``
tensors from a data loader. As in scikit-image's public wrappers, the conversion happens
once, here: :func:`to_working` turns what came in into the working tensor and returns a
:class:`Prepared` whose :meth:`~Prepared.restore_layout` gives the result back in the
caller's type, layout and dtype.

Layouts. ``spatial_dims`` (2 or 3) trailing axes, once the channel axis is taken out, are
spatial; one more leading axis, if present, is a batch. ``channel_axis`` names the channel
axis (negative counts from the end, as in scikit-image), or is ``None`` for none. Its
default, ``"auto"``, keeps the established conventions:

* tensors: ``(C, *spatial)`` or ``(B, C, *spatial)`` (the PyTorch convention), and a bare
  ``(*spatial)`` tensor as one channel;
* NumPy arrays: ``(*spatial)`` or ``(*spatial, C)`` / ``(B, *spatial, C)`` (the
  scikit-image and Pillow convention), with at most 4 channels (grey, grey + alpha, RGB,
  RGBA), since a larger last axis is as likely a third spatial axis.

A layout guessed by ``"auto"`` that reads as more than 4 channels of an image at most 4
pixels wide or high is refused: an ``(H, W, 3)`` tensor would otherwise be denoised as
``H`` channels of a ``W x 3`` image. Giving ``channel_axis`` states the layout and skips
the guess.

Values. Unsigned integers are divided by their dtype's largest value (uint8: 255) and
signed ones mapped from their dtype's range onto [0, 1]; results are rounded back to the
caller's dtype. Floating-point values are taken as they are, on [0, 1]; noise may carry
some a little outside, but an image reaching beyond [-1, 2] is refused rather than
clipped (a 0-255 float image would otherwise come back all white). NaN and infinite
values are left to the solver's own checks.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from .checks import check_spatial_dims

__all__ = ["ChannelAxis", "Image", "Mask", "Prepared", "check_value_range", "to_working"]

#: Where the channels are: an axis index, ``None`` for no channel axis, or ``"auto"``.
ChannelAxis = int | None | Literal["auto"]

#: Floating-point images must lie within this range (values beyond it are not noise).
FLOAT_RANGE = (-1.0, 2.0)
#: ``"auto"`` refuses more channels than this when an image side is this short or less.
_MAX_GUESSED_CHANNELS = 4
#: Elements per chunk when scanning for the value range (bounds the scan's extra memory).
_SCAN_CHUNK = 1 << 22

#: An image as callers pass it; results come back as the same type.
Image = TypeVar("Image", Tensor, npt.NDArray[Any])
#: Missing values as callers mark them: ``True`` where missing, in the image's own layout.
Mask = Tensor | npt.NDArray[Any]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Prepared(Generic[_T]):
    """The working tensor for an input, and how to give a result back in its form.

    Attributes:
        tensor: ``(B, C, *spatial)`` float tensor with values on [0, 1].
        as_numpy: whether the caller passed a NumPy array.
        dtype: the caller's dtype (a ``torch.dtype`` or a ``numpy.dtype``).
        shape: the caller's shape.
        permuted: the caller's shape with its axes in working order (batch, channel,
            spatial), before any axis of length 1 is added.
        forward: the permutation taking the caller's axes to ``permuted``.
        channel: the caller's channel axis, or ``None``.
        order: the permutation taking ``permuted`` back to the caller's axis order.
        integer_range: ``(low, high)`` of an integer dtype, or ``None`` for floats.
    """

    tensor: Tensor
    as_numpy: bool
    dtype: Any
    shape: tuple[int, ...]
    permuted: tuple[int, ...]
    forward: tuple[int, ...]
    channel: int | None
    order: tuple[int, ...]
    integer_range: tuple[int, int] | None

    def restore_layout(self, restored: Tensor) -> _T:
        """Return ``restored`` (``(B, C, *spatial)`` on [0, 1]) in the caller's form.

        The axes are put back in the caller's order and shape; integers are rounded to
        the nearest level of their dtype; NumPy arrays come back as NumPy arrays (on the
        CPU), tensors on their device.
        """
        out = restored.reshape(self.permuted).permute(self.order)
        if self.integer_range is not None:
            low, high = self.integer_range
            out = torch.round(out.to(self.tensor.dtype) * float(high - low)) + float(low)
            out = out.clamp(low, high)
        if self.as_numpy:
            values = out.detach().cpu().numpy()
            return cast(_T, values.astype(self.dtype, copy=False))
        return cast(_T, out.to(self.dtype))

    def working_mask(self, mask: Mask | None) -> Tensor | None:
        """A mask given in the caller's layout, in the working tensor's layout, on its
        device.

        The mask broadcasts to the image as NumPy and PyTorch broadcast; a mask without the
        channel axis (``(H, W)`` for an ``(H, W, C)`` array) marks every channel of a pixel.

        Raises:
            TypeError: ``mask`` is not a tensor or an array.
            ValueError: ``mask`` does not broadcast to the image's shape.
        """
        if mask is None:
            return None
        if isinstance(mask, np.ndarray):
            values = torch.from_numpy(np.array(mask))
        elif isinstance(mask, Tensor):
            values = mask
        else:
            raise TypeError(
                f"mask must be a boolean tensor or array (True: missing), got {type(mask).__name__}"
            )
        try:
            full = values.broadcast_to(self.shape)
        except RuntimeError:
            full = None
            if self.channel is not None and values.dim() == len(self.shape) - 1:
                with contextlib.suppress(RuntimeError):
                    full = values.unsqueeze(self.channel).broadcast_to(self.shape)
        if full is None:
            raise ValueError(
                f"mask must broadcast to the image's shape {self.shape}, got {tuple(values.shape)}"
            ) from None
        working = full.permute(self.forward).reshape(self.tensor.shape)
        return working.to(self.tensor.device)


def to_working(
    image: _T, *, channel_axis: ChannelAxis = "auto", spatial_dims: int = 2
) -> Prepared[_T]:
    """Convert an image into the ``(B, C, *spatial)`` float tensor the solver works on.

    Args:
        image: a ``torch.Tensor`` or a ``numpy.ndarray`` of real numbers (integers, or
            floats on [0, 1]).
        channel_axis: the axis holding the channels, ``None`` for a single-channel image,
            or ``"auto"`` (default) for the usual layout of the type (see the module
            documentation).
        spatial_dims: the number of spatial axes, 2 (images) or 3 (volumes).

    Returns:
        The working tensor (float32, or float64 for float64 inputs and wide integers; on
        the tensor's device, or the CPU for arrays) and what restores the caller's form.

    Raises:
        TypeError: ``image`` is not a tensor or an array of real numbers.
        ValueError: the layout does not fit ``channel_axis`` and ``spatial_dims``, or float
            values lie far outside [0, 1].

    Example:
        >>> photo = np.full((5, 7, 3), 128, dtype=np.uint8)
        >>> prepared = to_working(photo)
        >>> tuple(prepared.tensor.shape), prepared.tensor.dtype
        ((1, 3, 5, 7), torch.float32)
        >>> prepared.restore_layout(prepared.tensor).dtype
        dtype('uint8')
    """
    as_numpy = False
    if isinstance(image, np.ndarray):
        as_numpy = True
        tensor = _from_numpy(image)
        dtype: Any = image.dtype
    elif isinstance(image, Tensor):
        tensor = image
        dtype = image.dtype
    else:
        raise TypeError(
            "image must be a torch.Tensor or a numpy.ndarray, got "
            f"{type(image).__name__} (np.asarray(image) converts most image objects)"
        )
    spatial_dims = check_spatial_dims(spatial_dims)
    shape = tuple(tensor.shape)
    axis = _channel_axis(shape, channel_axis, spatial_dims, as_numpy)
    order = _working_order(len(shape), axis, spatial_dims)
    working = tensor.permute(order)
    permuted = tuple(working.shape)
    if axis is None:
        working = working.unsqueeze(0 if len(shape) == spatial_dims else 1)
    if working.dim() == spatial_dims + 1:
        working = working.unsqueeze(0)
    if channel_axis == "auto":
        _check_guess(tuple(working.shape))

    integer_range = _integer_range(tensor.dtype)
    if integer_range is not None:
        low, high = integer_range
        compute = torch.float32 if high - low <= 65535 else torch.float64
        working = (working.to(compute) - float(low)) / float(high - low)
    elif tensor.dtype in (torch.float32, torch.float64):
        check_value_range(working)
    else:
        working = working.float()
        check_value_range(working)
    # The caller's axes in terms of the working tensor's, to undo the permutation.
    back = tuple(int(i) for i in np.argsort(order))
    return Prepared(
        tensor=working.contiguous(),
        as_numpy=as_numpy,
        dtype=dtype,
        shape=shape,
        permuted=permuted,
        forward=order,
        channel=axis,
        order=back,
        integer_range=integer_range,
    )


def check_value_range(image: Tensor, name: str = "image") -> None:
    """Refuse a floating-point image whose finite values reach beyond [-1, 2].

    Denoising works on [0, 1]; noise may carry values a little outside, but values such
    as 255 mean another scale, which clipping would turn into a white image.

    Raises:
        ValueError: naming the range found and what to do.
    """
    low, high = _finite_range(image)
    if low is None or high is None:
        return
    if low >= FLOAT_RANGE[0] and high <= FLOAT_RANGE[1]:
        return
    hint = (
        "divide by 255 (or 65535 for 16-bit data), or pass the integer array itself"
        if high > FLOAT_RANGE[1]
        else "rescale it to [0, 1]"
    )
    raise ValueError(
        f"{name} values must lie on [0, 1] (noise may carry them a little outside, up to "
        f"[{FLOAT_RANGE[0]:g}, {FLOAT_RANGE[1]:g}]); got values from {low:g} to {high:g}: "
        f"{hint}"
    )


def _from_numpy(array: npt.NDArray[Any]) -> Tensor:
    kind = array.dtype.kind
    if kind not in "uif":
        raise TypeError(
            f"image must hold real numbers (integers or floats), got dtype {array.dtype}"
        )
    if array.dtype.itemsize == 8 and kind == "u":
        raise TypeError("image dtype uint64 is not supported; use uint32 or a float dtype")
    native = array.dtype.newbyteorder("=")
    if array.dtype != native or not array.flags.writeable or min(array.strides, default=0) < 0:
        array = np.array(array, dtype=native)  # a copy torch can share
    return torch.from_numpy(array)


def _channel_axis(
    shape: tuple[int, ...], channel_axis: ChannelAxis, spatial_dims: int, as_numpy: bool
) -> int | None:
    """The channel axis as a non-negative index, or ``None``."""
    ndim = len(shape)
    axes = ", ".join("HW" if spatial_dims == 2 else "DHW")
    if channel_axis == "auto":
        if ndim == spatial_dims:
            return None
        if ndim in (spatial_dims + 1, spatial_dims + 2):
            if not as_numpy:
                return ndim - spatial_dims - 1
            if shape[-1] <= _MAX_GUESSED_CHANNELS:
                return ndim - 1
            raise ValueError(
                f"cannot tell the layout of an array of shape {shape}: its last axis "
                f"({shape[-1]}) is too long for colour channels; pass channel_axis (-1 for "
                f"({axes}, C), 0 for (C, {axes})), or channel_axis=None if every axis is "
                "spatial (spatial_dims=3 for a volume)"
            )
        shapes = (
            f"({axes}), ({axes}, C) or (B, {axes}, C)"
            if as_numpy
            else f"(C, {axes}) or (B, C, {axes})"
        )
        raise ValueError(
            f"image must have shape {shapes} with spatial_dims={spatial_dims}, got shape "
            f"{shape}; pass channel_axis (None for no channel axis) for another layout"
        )
    if channel_axis is None:
        if ndim not in (spatial_dims, spatial_dims + 1):
            raise ValueError(
                f"with channel_axis=None, image must have shape ({axes}) or (B, {axes}) "
                f"with spatial_dims={spatial_dims}, got shape {shape}"
            )
        return None
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, int):
        raise TypeError(f"channel_axis must be an int, None or 'auto', got {channel_axis!r}")
    if not -ndim <= channel_axis < ndim:
        raise ValueError(
            f"channel_axis {channel_axis} is out of range for an image of shape {shape}"
        )
    if ndim not in (spatial_dims + 1, spatial_dims + 2):
        raise ValueError(
            f"with a channel axis, image must have {spatial_dims} spatial axes ({axes}) and "
            f"at most one batch axis, got shape {shape}"
        )
    return channel_axis % ndim


def _working_order(ndim: int, axis: int | None, spatial_dims: int) -> tuple[int, ...]:
    """The permutation taking the caller's axes to ``(batch?, channel?, *spatial)``."""
    rest = [i for i in range(ndim) if i != axis]
    leading, spatial = rest[: len(rest) - spatial_dims], rest[len(rest) - spatial_dims :]
    channel = [] if axis is None else [axis]
    return (*leading, *channel, *spatial)


def _check_guess(working: tuple[int, ...]) -> None:
    """Refuse a guessed layout of many channels on an image a few pixels across."""
    channels, sides = working[1], working[2:]
    if channels > _MAX_GUESSED_CHANNELS and min(sides, default=0) <= _MAX_GUESSED_CHANNELS:
        raise ValueError(
            f"image read as {channels} channels of a {' x '.join(map(str, sides))} image, "
            "which looks like a channels-last layout; pass channel_axis=-1 for (H, W, C), "
            "or give channel_axis explicitly to keep this reading"
        )


def _integer_range(dtype: torch.dtype) -> tuple[int, int] | None:
    if dtype == torch.bool:
        raise TypeError("image must hold numbers, got dtype torch.bool")
    if dtype.is_floating_point:
        return None
    if dtype.is_complex:
        raise TypeError(f"image must hold real numbers, got dtype {dtype}")
    info = torch.iinfo(dtype)
    return int(info.min), int(info.max)


def _finite_range(image: Tensor) -> tuple[float | None, float | None]:
    """The least and greatest finite values (``None`` if there are none), in chunks."""
    flat = image.detach().reshape(-1)
    low: float | None = None
    high: float | None = None
    for start in range(0, flat.numel(), _SCAN_CHUNK):
        chunk = flat[start : start + _SCAN_CHUNK]
        lo, hi = torch.aminmax(chunk)
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            # NaN (missing) or infinite values: scan the finite ones (a copy of the chunk).
            finite = chunk[torch.isfinite(chunk)]
            if finite.numel() == 0:
                continue
            lo, hi = torch.aminmax(finite)
        low = float(lo) if low is None else min(low, float(lo))
        high = float(hi) if high is None else max(high, float(hi))
    return low, high
