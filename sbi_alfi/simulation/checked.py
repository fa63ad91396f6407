r"""Calling a user's simulator so that its failures say what went wrong."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["checked_simulation"]


def checked_simulation(simulator: Callable[[Tensor], Tensor], theta: Tensor) -> Tensor:
    r"""Runs `simulator` on a batch `theta` of shape `(N, D)` and returns `x` of shape
    `(N, *x_shape)`, or raises a :class:`ValueError` that names the failure: the
    simulator raised, returned the wrong number of rows, or returned NaN/inf (how
    many rows, and the first parameters that produced them).

    `sbi` drops such simulations during training; the methods here need a complete
    batch for every recurrent step or chain, so they stop instead, and say where.
    """
    try:
        x = torch.as_tensor(simulator(theta))
    except Exception as error:
        raise ValueError(
            f"The simulator raised {type(error).__name__} on a batch of {len(theta)} "
            f"parameters (the first: {theta[0].tolist()}): {error}"
        ) from error
    if x.dim() < 2 or len(x) != len(theta):
        raise ValueError(
            f"The simulator must return one row per parameter, shape ({len(theta)}, "
            f"*x_shape); it returned {tuple(x.shape)}."
        )
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(-1)
    if bad.any():
        rows = bad.nonzero()[:, 0]
        shown = ", ".join(str(theta[i].tolist()) for i in rows[:3].tolist())
        raise ValueError(
            f"The simulator returned NaN or inf in {len(rows)} of {len(x)} rows, "
            f"e.g. at theta = {shown}."
        )
    return x
