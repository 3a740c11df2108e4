"""The Adam solver for total-variation denoising, over any regulariser and data term.

Per image ``f`` with ``N`` values in [0, 1] (``N = C*H*W`` for an image, ``C*D*H*W`` for a
volume), :func:`solve` minimises

.. math::

    E(u) = \\frac{1}{N}\\sum g(u, f) + w \\cdot \\frac{1}{N}\\mathrm{TV}_\\varepsilon(u),

the mean fidelity of a noise model (:class:`tvdenoise.fidelity.DataTerm`; for Gaussian noise
``g = (u - f)**2``) plus ``weight`` times the mean total variation over the spatial axes
(:class:`tvdenoise.tv.TotalVariation`). In the classic Rudin-Osher-Fatemi form
``0.5 ||u - f||^2 + lambda TV(u)`` on sums this is ``lambda = weight / 2``. Missing values
(NaN) have no fidelity term (:mod:`tvdenoise.missing`).

The iteration is Adam on the data term's solver variable (``u`` itself, or ``sqrt(u)`` for
photon counts), started at the data, with the gradient written out by hand (no autograd
graph) and all updates in place; the Adam step is PyTorch's fused kernel where available.
The learning rate starts at ``lr`` (by default the data term's ``lr_per_weight * weight``,
because the distance a value travels to the minimiser scales with the weight) and decays
geometrically to the data term's final ratio over ``max_iter`` iterations. Every
``check_every`` iterations the energy is evaluated and an image stops once the relative
change of its energy since the previous check is below ``tol``,
``|E_prev - E| < tol * |E|``; the batch stops when all its images have.

How close 60 iterations come to the certified minimiser (:mod:`tvdenoise.reference`) is
measured by ``scripts/eval_noise.py --convergence`` and ``benchmarks/bench_ndim.py``, and
checked on small images and volumes by the tests.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from .checks import check_choice, floating

# Defined in a module free of torch (the command shows them); re-exported here.
from .defaults import DEFAULT_MAX_ITER as DEFAULT_MAX_ITER
from .defaults import DEFAULT_TOL as DEFAULT_TOL
from .defaults import MAX_WEIGHT
from .fidelity import NOISE_MODELS, DataTerm, NoiseModel, data_term
from .kernel import FusedSteps
from .kernel import energy as kernel_energy
from .missing import all_finite, check_finite, split_missing
from .tv import TV_KINDS, ColorMode, TotalVariation, TVKind

if TYPE_CHECKING:
    from .tgv import Regulariser

__all__ = ["DEFAULT_EPS", "DenoiseResult", "energy", "solve"]

#: Huber smoothing radius of the total variation, on the [0, 1] intensity scale (about
#: 0.8 of an 8-bit grey level): the exact minimiser's PSNR barely moves against a smaller
#: radius, and Adam gets much closer to it in 60 steps (benchmarks/RESULTS.md).
DEFAULT_EPS = 3e-3
DEFAULT_WEIGHT = 0.1
# A short momentum memory; each data term carries the rest of its step schedule.
_BETA1, _ADAM_EPS = 0.8, 1e-8

#: Called at each energy check with (iteration, energy per image).
Callback = Callable[[int, Tensor], None]


@dataclass(frozen=True)
class DenoiseResult:
    """What :func:`solve` returns.

    Attributes:
        restored: the restored images, ``(B, C, *spatial)``, clipped to [0, 1].
        weights: the weight used per image, ``(B,)``.
        iterations: iterations run per image, ``(B,)``.
        energy: the final energy ``E(u)`` per image, ``(B,)``.
        field: the regulariser's own variables, ``None`` for TV; for TGV its vector field
            ``w``, one ``(B, C, *spatial)`` block per axis along the channel axis.
    """

    restored: Tensor
    weights: Tensor
    iterations: Tensor
    energy: Tensor
    field: Tensor | None = None


class Workspace(Protocol):
    """What the Adam loop needs of a regulariser's workspace.

    The solver variable ``x`` is the data term's variable ``u`` itself for TV; a
    regulariser that owns extra variables (TGV's vector field) stacks them with ``u``
    along the channel axis, so that one Adam step updates all of them.
    """

    term: DataTerm

    def variables(self, u: Tensor) -> Tensor:
        """The solver variable that starts at the data term's variable ``u`` (or, stacked
        with ``u``, at the regulariser's own variables as :meth:`extra` gives them)."""
        ...

    def image(self, x: Tensor) -> Tensor:
        """The data term's variable inside the solver variable ``x`` (a view)."""
        ...

    def gradient(self, x: Tensor) -> Tensor:
        """Half the energy gradient times ``N`` in ``x``, in a workspace buffer."""
        ...

    def energy(self, x: Tensor) -> Tensor:
        """The energy per image."""
        ...

    def extra(self, x: Tensor) -> Tensor | None:
        """The regulariser's own variables in ``x``, stacked (``None`` if it has none)."""
        ...


def _workspace(
    f: Tensor,
    half_weight: Tensor,
    reg: Regulariser,
    term: DataTerm,
    observed: Tensor | None,
) -> Workspace:
    # The Huber radius makes the energy differentiable; with eps = 0 (the exact total
    # variation of the reference solvers) Adam's gradient is 0/0 where the image is flat.
    if not reg.eps > 0:
        raise ValueError(f"eps must be > 0 for the Adam solver, got {reg.eps}")
    if isinstance(reg, TotalVariation):
        return _Workspace(f, half_weight, reg, term, observed)
    return reg.workspace(f, half_weight, term, observed)


class _Workspace:
    """Preallocated buffers and the fused, in-place gradient of the energy.

    Buffers: one difference per spatial axis and a scratch buffer the size of the image
    (which also receives the gradient), plus a magnitude buffer for joint colour TV of
    several channels. The solver variable, Adam's moments and the data make the rest.
    """

    def __init__(
        self,
        f: Tensor,
        half_weight: Tensor,
        reg: TotalVariation,
        term: DataTerm,
        observed: Tensor | None = None,
    ) -> None:
        self.f = f
        self.observed = observed
        self.term = term
        self.half_weight = half_weight
        self.reg = reg
        self.eps = reg.eps
        self.inverse_spacing = reg.inverse_spacing()

    # The buffers are made at first use: the compiled kernel (tvdenoise.kernel) needs none.
    @cached_property
    def diffs(self) -> list[Tensor]:
        """One difference per spatial axis."""
        return [torch.zeros_like(self.f) for _ in self.reg.axes]

    @cached_property
    def scratch(self) -> Tensor:
        """A buffer the size of the image, which also receives the gradient."""
        return torch.empty_like(self.f)

    @cached_property
    def norm(self) -> Tensor | None:
        """The magnitude buffer of joint colour TV of several channels."""
        f = self.f
        shared = self.reg.joint and f.shape[1] > 1
        return f.new_empty((f.shape[0], 1, *f.shape[2:])) if shared else None

    def variables(self, u: Tensor) -> Tensor:
        """TV has no variables besides ``u``."""
        return u

    def image(self, x: Tensor) -> Tensor:
        return x

    def extra(self, x: Tensor) -> None:
        return None

    def _differences(self, u: Tensor) -> None:
        for axis, inv, d in zip(self.reg.axes, self.inverse_spacing, self.diffs, strict=True):
            n = u.shape[axis]
            torch.sub(
                u.narrow(axis, 1, n - 1), u.narrow(axis, 0, n - 1), out=d.narrow(axis, 0, n - 1)
            )
            if inv is not None:
                d.mul_(inv)

    def _squared_magnitudes(self) -> Tensor:
        """Sum of the squared differences, in the scratch buffer or the shared norm.

        The shared norm of several channels is accumulated channel by channel, in
        elementwise passes: PyTorch's reduction over the short channel axis is slower than
        the same additions.
        """
        if self.norm is None:
            first, *rest = self.diffs
            squared = torch.mul(first, first, out=self.scratch)
            for d in rest:
                squared.addcmul_(d, d)
            return squared
        planes = [d.narrow(1, c, 1) for d in self.diffs for c in range(d.shape[1])]
        torch.mul(planes[0], planes[0], out=self.norm)
        for plane in planes[1:]:
            self.norm.addcmul_(plane, plane)
        return self.norm

    def gradient(self, u: Tensor) -> Tensor:
        """Half the energy gradient times N, ``g'(u) / 2 + (w / 2) grad TV(u)``, in scratch.

        The data term may precondition it (the Poisson model multiplies it by ``u``).
        """
        self._differences(u)
        if self.reg.kind == "anisotropic":
            for d in self.diffs:
                torch.abs(d, out=self.scratch).clamp_min_(self.eps)
                d.div_(self.scratch).mul_(self.half_weight)
        else:
            norm = self._squared_magnitudes()
            # norm <- (w / 2) / max(eps, |grad u|)
            norm.clamp_min_(self.eps * self.eps).rsqrt_().mul_(self.half_weight)
            for d in self.diffs:
                d.mul_(norm)
        out = self.scratch
        self.term.half_gradient_(u, self.f, out)
        if self.observed is not None:  # no fidelity where a value is missing
            out.mul_(self.observed)
        for d, inv in zip(self.diffs, self.inverse_spacing, strict=True):
            if inv is not None:
                d.mul_(inv)
            out.sub_(d)
        for axis, d in zip(self.reg.axes, self.diffs, strict=True):
            n = u.shape[axis]
            out.narrow(axis, 1, n - 1).add_(d.narrow(axis, 0, n - 1))
        self.term.precondition_(u, out)
        return out

    def energy(self, u: Tensor) -> Tensor:
        """``E(u)`` per image, computed in the workspace's buffers."""
        tv = self._tv_sum(u) / u[0].numel()
        values = self.term.variable_value(u, self.f, self.scratch)
        if self.observed is not None:
            values = values * self.observed
        fidelity = values.flatten(1).mean(1)
        return fidelity + 2 * self.half_weight.reshape(-1) * tv

    def _tv_sum(self, u: Tensor) -> Tensor:
        """The summed Huber total variation per image, as ``total_variation`` computes it."""
        self._differences(u)
        if self.reg.kind == "anisotropic":
            # Through the scratch buffer: the gradient relies on the zero last slice of
            # each difference, which the Huber sum would overwrite.
            total = _huber_sum(torch.abs(self.diffs[0], out=self.scratch), self.eps)
            for d in self.diffs[1:]:
                total = total + _huber_sum(torch.abs(d, out=self.scratch), self.eps)
            return total
        return _huber_sum(self._squared_magnitudes().sqrt_(), self.eps)


def _huber_sum(t: Tensor, eps: float) -> Tensor:
    """Per image, the sum of the Huber function of the magnitudes ``t >= 0`` (overwritten).

    ``huber(t) = t - eps / 2 + max(eps - t, 0)**2 / (2 eps)``, which is ``t**2 / (2 eps)``
    for ``t <= eps``.
    """
    linear = t.flatten(1).sum(1) - 0.5 * eps * t[0].numel()
    quadratic = t.neg_().add_(eps).clamp_min_(0.0).square_().flatten(1).sum(1)
    return linear + quadratic / (2 * eps)


def weights_per_image(weight: float | Sequence[float] | Tensor, batch: int, like: Tensor) -> Tensor:
    """Validate ``weight`` and return one weight per image, ``(batch,)``, like ``like``."""
    weights = torch.as_tensor(weight, dtype=like.dtype, device=like.device).reshape(-1)
    if weights.numel() == 1:
        weights = weights.expand(batch)
    if weights.numel() != batch:
        raise ValueError(f"weight must be one number or one per image ({batch}); got {weight}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"weight must be a finite number >= 0, got {weight}")
    if bool((weights > MAX_WEIGHT).any()):
        raise ValueError(f"weight must be <= {MAX_WEIGHT:g}, got {weight}")
    return weights.clone()


@dataclass(frozen=True)
class Iteration:
    """How the Adam solver iterates: limits, stopping rule and learning rate.

    With ``energy=False`` no energy is computed: ``max_iter`` iterations run without a
    stopping test or a callback, and the result's energies are NaN (the weight searches'
    solves, which read only the images).
    """

    max_iter: int = DEFAULT_MAX_ITER
    tol: float = DEFAULT_TOL
    lr: float | None = None
    check_every: int = 10
    energy: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_iter, numbers.Integral) or isinstance(self.max_iter, bool):
            raise TypeError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.check_every}")


def solve(
    noisy: Tensor,
    weight: float | Sequence[float] | Tensor = DEFAULT_WEIGHT,
    *,
    tv: TVKind = "isotropic",
    color: ColorMode = "joint",
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    lr: float | None = None,
    eps: float = DEFAULT_EPS,
    check_every: int = 10,
    callback: Callback | None = None,
    noise: NoiseModel = "gaussian",
    peak: float | None = None,
    spatial_dims: int = 2,
    spacing: Sequence[float] | None = None,
) -> DenoiseResult:
    """Denoise a batch and report how the solver went; see :func:`denoise` for the options.

    Args:
        noisy: ``(C, *spatial)`` or ``(B, C, *spatial)`` float tensor in [0, 1].
        weight: one weight, or one per image.
        tv, color, max_iter, tol, lr, eps: as in :func:`denoise`.
        check_every: iterations between energy checks (and ``callback`` calls).
        callback: called as ``callback(iteration, energy)`` at every check.
        noise, peak: as in :func:`denoise`.
        spatial_dims, spacing: as in :func:`denoise`.

    Returns:
        A :class:`DenoiseResult` with ``(B, C, *spatial)`` restored images.
    """
    reg, term = model(tv, color, eps, spatial_dims, spacing, noise, peak)
    iteration = Iteration(max_iter, tol, lr, check_every)
    f = reg.batch(noisy, "noisy")
    return run_solver(f, weight, reg, term, iteration, callback)


def model(
    tv: str,
    color: str,
    eps: float,
    spatial_dims: int,
    spacing: Sequence[float] | None,
    noise: str,
    peak: float | None,
) -> tuple[TotalVariation, DataTerm]:
    """The validated regulariser and data term of the public options (``eps > 0``)."""
    check_choice("tv", tv, TV_KINDS)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    reg = TotalVariation(
        tv,  # type: ignore[arg-type]
        color,  # type: ignore[arg-type]
        eps,
        spatial_dims,
        None if spacing is None else tuple(spacing),
    )
    _check_peak(noise, peak)
    return reg, data_term(noise)


def run_solver(
    noisy: Tensor,
    weight: float | Sequence[float] | Tensor,
    reg: Regulariser,
    term: DataTerm,
    iteration: Iteration,
    callback: Callback | None = None,
    *,
    clip: bool = True,
) -> DenoiseResult:
    """:func:`solve` on a validated ``(B, C, *spatial)`` batch and settings objects.

    NaN values of ``noisy`` are missing (:mod:`tvdenoise.missing`): no fidelity there.
    ``reg`` is a :class:`~tvdenoise.tv.TotalVariation` or a
    :class:`~tvdenoise.tgv.TotalGeneralisedVariation` (Gaussian noise only).
    With ``clip=False`` the result is not clipped to [0, 1]: for data in another space
    than intensities, such as the opponent colour channels (:mod:`tvdenoise.colour`).
    """
    check_finite(noisy, "noisy")
    # The solver is not differentiable (in-place updates): its input is data.
    f, observed = split_missing(floating(noisy.detach()).contiguous())
    term.check_data(f)
    b = f.shape[0]
    weights = weights_per_image(weight, b, f)
    iterations = torch.zeros(b, dtype=torch.long)
    if b == 0:
        return DenoiseResult(f.clone(), weights, iterations, f.new_zeros(0))
    active = weights > 0
    u = term.to_variable(f)
    half_weight = (weights / 2).reshape(b, *([1] * (f.dim() - 1)))
    ws = _workspace(f, half_weight, reg, term, observed)
    x = ws.variables(u)
    if bool(active.any()):
        energy = _adam(x, ws, weights, active, iterations, iteration, callback)
    else:
        energy = ws.energy(x)
    restored = term.from_variable_(ws.image(x).contiguous())
    if clip:
        restored.clamp_(0.0, 1.0)
    return DenoiseResult(restored, weights, iterations, energy, ws.extra(x))


def _adam(
    u: Tensor,
    ws: Workspace,
    weights: Tensor,
    active: Tensor,
    iterations: Tensor,
    iteration: Iteration,
    callback: Callback | None,
) -> Tensor:
    """Run Adam in place on the solver variable ``u``; update ``iterations``, and return
    the final energy per image."""
    schedule = ws.term.schedule
    max_iter, check_every, tol = iteration.max_iter, iteration.check_every, iteration.tol
    if not iteration.energy:  # no stopping test: one run of all the iterations
        check_every = max_iter
    if iteration.lr is not None:
        base_lr = torch.full_like(weights, iteration.lr)
    else:
        base_lr = weights * schedule.lr_per_weight
    floor = ws.term.floor
    decay = schedule.final_lr_ratio ** (1.0 / max(max_iter - 1, 1))
    # Adam's moments start at zero; the kernel's first step takes them as zero unread.
    m = torch.empty_like(u)
    v = torch.empty_like(u)
    runs = _runs(base_lr, active)
    # Counted where the images are: a copy to the host every iteration would make the
    # host wait for the device each time.
    steps = torch.zeros(active.shape, dtype=iterations.dtype, device=active.device)
    counted = 0  # the iterations added to `steps`, at each check
    fused = _kernel(ws, u, m, v, base_lr, active, schedule.beta2)
    if fused is None:
        m.zero_()
        v.zero_()
    if not iteration.energy:
        energy = u.new_full(active.shape, math.nan)
    elif fused is None:
        energy = ws.energy(u)
    else:  # the stopping test compares energies summed one way, the kernel's
        stopped = ws.energy(u) if not bool(active.all()) else u.new_zeros(active.shape)
        # Without a check before the last iteration the first energy is compared with
        # nothing.
        energy = fused.energy(stopped) if check_every < max_iter else stopped
    k = 0
    while k < max_iter:
        if fused is not None:  # the steps up to the next check in one call
            last = min(max_iter, (k // check_every + 1) * check_every)
            fused.steps(k + 1, last, decay)
            k = last
        elif _fused_per_run(u, runs):
            k += 1
            grad = ws.gradient(u)
            _fused_step(u, grad, m, v, k, runs, decay ** (k - 1), schedule.beta2)
        else:
            k += 1
            grad = ws.gradient(u)
            rates = (base_lr * active.to(base_lr.device)).to(u)
            _batched_step(u, grad, m, v, k, rates, decay ** (k - 1), schedule.beta2)
        if floor is not None:
            ws.image(u).clamp_min_(floor)
        if k % check_every == 0 or k == max_iter:
            steps += active * (k - counted)
            counted = k
            if not iteration.energy:
                continue  # k == max_iter: the end
            new_energy = ws.energy(u) if fused is None else fused.energy(energy)
            change = (energy - new_energy).abs() / new_energy.abs().clamp_min(1e-12)
            energy.copy_(new_energy)
            if callback is not None:
                callback(k, energy)
            done = (change < tol).to(active.device)
            if k < max_iter and bool((active & done).any()):
                active &= ~done
                if not bool(active.any()):
                    break
                runs = _runs(base_lr, active)
                fused = _kernel(ws, u, m, v, base_lr, active, schedule.beta2)
    iterations += steps.to(iterations.device)
    return energy


def _kernel(
    ws: Workspace, u: Tensor, m: Tensor, v: Tensor, base_lr: Tensor, active: Tensor, beta2: float
) -> FusedSteps | None:
    """The compiled CPU iteration for this solve, where it applies (:mod:`tvdenoise.kernel`)."""
    from .tgv import TGVWorkspace

    if not isinstance(ws, _Workspace | TGVWorkspace):
        return None
    return FusedSteps.plan(ws, u, m, v, base_lr, active, _BETA1, beta2, _ADAM_EPS)


#: A run of images ``[start, stop)`` of the batch that share one learning rate.
_Run = tuple[int, int, float]


def _runs(base_lr: Tensor, active: Tensor) -> list[_Run]:
    """Split the active images into runs of neighbours with the same learning rate.

    Adam updates one run at a time; a frozen image (weight 0 or converged) is in no run.
    A batch of one image, or of images with one weight, is a single run.
    """
    runs: list[_Run] = []
    for i, (rate, on) in enumerate(zip(base_lr.tolist(), active.tolist(), strict=True)):
        if not on:
            continue
        if runs and runs[-1][1] == i and runs[-1][2] == rate:
            runs[-1] = (runs[-1][0], i + 1, rate)
        else:
            runs.append((i, i + 1, rate))
    return runs


def _fused_per_run(u: Tensor, runs: list[_Run]) -> bool:
    """Whether to update ``u`` with PyTorch's fused Adam kernel, one call per run.

    It makes one pass over memory, but takes one learning rate per call. On the CPU the
    runs are few (a batch is solved a cache-sized group of images at a time); elsewhere a
    batch whose images have many learning rates (the weight search's candidates) is
    updated by :func:`_batched_step` in a few calls for all of them instead, and so is
    any batch where the fused kernel is missing.
    """
    if not (hasattr(torch, "_fused_adam_") and u.device.type in ("cpu", "cuda")):
        return False
    return u.device.type == "cpu" or len(runs) == 1


def _fused_step(
    u: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    k: int,
    runs: list[_Run],
    decay: float,
    beta2: float,
) -> None:
    """One Adam step with the fused kernel that ``torch.optim.Adam(fused=True)`` uses."""
    count = torch.tensor(float(k), device=u.device)
    for start, stop, rate in runs:
        torch._fused_adam_(
            [u[start:stop]],
            [grad[start:stop]],
            [m[start:stop]],
            [v[start:stop]],
            [],
            [count],
            lr=rate * decay,
            beta1=_BETA1,
            beta2=beta2,
            weight_decay=0.0,
            eps=_ADAM_EPS,
            amsgrad=False,
            maximize=False,
        )


def _batched_step(
    u: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    k: int,
    rates: Tensor,
    decay: float,
    beta2: float,
) -> None:
    """The step of :func:`_fused_step` for the whole batch in plain tensor operations, with
    a learning rate per image ``rates`` ``(B,)`` (0 leaves an image where it is)."""
    correction1 = 1 - _BETA1**k
    correction2 = math.sqrt(1 - beta2**k)
    m.lerp_(grad, 1 - _BETA1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = v.sqrt().div_(correction2).add_(_ADAM_EPS)
    scale = rates.reshape(-1, *([1] * (u.dim() - 1))) * (-decay / correction1)
    u.addcdiv_(m * scale, denom)


def _check_peak(noise: str, peak: float | None) -> None:
    check_choice("noise", noise, NOISE_MODELS)
    if peak is not None:
        if noise != "poisson":
            raise ValueError(f"peak applies to noise='poisson' only; got noise={noise!r}")
        if not (math.isfinite(peak) and peak > 0):
            raise ValueError(f"peak must be a finite number of photons > 0, got {peak}")


def energy(
    restored: Tensor,
    noisy: Tensor,
    weight: Tensor,
    reg: Regulariser,
    term: DataTerm,
    *,
    slices: int = 256,
) -> Tensor:
    """The energy ``E(u)`` that :func:`solve` minimises, per image, computed in slabs.

    Where the compiled kernel applies (total variation on the CPU, nothing missing) it
    sums the whole batch at once, row by row, with no image-sized temporaries. Otherwise
    the batch is cut along its first spatial axis into slabs of ``slices`` rows (images)
    or planes (volumes), so memory stays at a few slabs' worth whatever the size, which
    matters for images that were solved in tiles.

    Args:
        restored: ``(B, C, *spatial)`` intensities ``u``; for TGV followed along the
            channel axis by its field ``w`` (:attr:`DenoiseResult.field`).
        noisy: ``(B, C, *spatial)`` data ``f``.
        weight: ``(B,)`` weights.
        reg, term: the regulariser and the data term.
        slices: rows or planes per slab.

    Returns:
        ``(B,)`` energies.
    """
    b = noisy.shape[0]
    axis = 2
    length = noisy.shape[axis]
    half_weight = (weight / 2).reshape(b, *([1] * (noisy.dim() - 1)))
    variable = term.to_variable(restored)
    if isinstance(reg, TotalVariation) and all_finite(noisy):
        # The compiled kernel sums all of it at once, with no image-sized temporaries.
        whole = _workspace(noisy.contiguous(), half_weight, reg, term, None)
        assert isinstance(whole, _Workspace)
        summed = kernel_energy(whole, variable.contiguous())
        if summed is not None:
            return summed

    def slab_sum(start: int, stop: int) -> Tensor:
        slab, observed = split_missing(noisy.narrow(axis, start, stop - start).contiguous())
        ws = _workspace(slab, half_weight, reg, term, observed)
        part = variable.narrow(axis, start, stop - start).contiguous()
        return ws.energy(ws.variables(part)) * slab[0].numel()

    total = torch.zeros(b, dtype=noisy.dtype, device=noisy.device)
    for start in range(0, length, slices):
        stop = min(start + slices, length)
        if stop < length:
            # The slab's last slice needs the next one for its difference along the axis;
            # that extra slice is counted again (fidelity, other axes) in the next slab.
            total += slab_sum(start, stop + 1) - slab_sum(stop, stop + 1)
        else:
            total += slab_sum(start, stop)
    return total / noisy[0].numel()
