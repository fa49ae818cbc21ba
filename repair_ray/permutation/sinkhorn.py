"""The Sinkhorn operator of Sinkhorn re-basin: a doubly stochastic matrix from a matrix of logits.

Log-space alternating normalisation, in either order, with a gradient by either rule:

* ``order``: ``columns`` normalises the columns, then the rows, in each iteration (Peña et al.'s
  ``fagp/sinkhorn-rebasin``, after Eisenberger et al.'s implicit-sinkhorn: the result's rows sum
  to 1 exactly, its columns nearly); ``rows`` the rows, then the columns (this tool's first
  version: the columns exact).
* ``gradient``: ``unrolled`` backpropagates through every iteration; ``implicit`` differentiates
  the fixed point the iterations converge to (Eisenberger et al. 2022, "A unified framework for
  implicit Sinkhorn differentiation", as ``sinkhorn-rebasin`` does): one linear solve of size
  ``m + n - 1`` instead of the iterations' graph. The two agree once the iterations converge.
"""

from __future__ import annotations

import torch

SINKHORN_ORDERS = ("rows", "columns")
SINKHORN_GRADIENTS = ("unrolled", "implicit")


def log_sinkhorn(logits: torch.Tensor, iters: int, order: str = "rows") -> torch.Tensor:
    """``iters`` iterations of alternating normalisation of ``logits`` in log space (``order`` first)."""
    if order not in SINKHORN_ORDERS:
        raise ValueError(f"order must be one of {', '.join(SINKHORN_ORDERS)}, got {order!r}")
    first, second = (1, 0) if order == "rows" else (0, 1)
    log_p = logits
    for _ in range(iters):
        log_p = log_p - torch.logsumexp(log_p, dim=first, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, dim=second, keepdim=True)
    return log_p


def sinkhorn(logits: torch.Tensor, iters: int, *, order: str = "rows", gradient: str = "unrolled") -> torch.Tensor:
    """The doubly stochastic matrix of ``logits`` (an ``m x n`` matrix) after ``iters`` iterations.

    See the module for ``order`` and ``gradient``.
    """
    if gradient not in SINKHORN_GRADIENTS:
        raise ValueError(f"gradient must be one of {', '.join(SINKHORN_GRADIENTS)}, got {gradient!r}")
    if gradient == "implicit":
        return ImplicitSinkhorn.apply(logits, iters, order)
    return log_sinkhorn(logits, iters, order).exp()


class ImplicitSinkhorn(torch.autograd.Function):
    """:func:`sinkhorn` whose backward differentiates the fixed point rather than the iterations.

    At the fixed point ``P = exp(Z + x 1ᵀ + 1 yᵀ)`` with fixed marginals; for an upstream gradient
    ``G``, with ``H = P ⊙ G``, ``dL/dZ = H − P ⊙ (x̂ 1ᵀ + 1 ŷᵀ)`` where ``(x̂, ŷ)`` solves
    ``[[diag(P1), P], [Pᵀ, diag(Pᵀ1)]] [x̂; ŷ] = [H1; Hᵀ1]``. The system is singular along
    ``(1, −1)``, so ``ŷ``'s last entry is fixed at 0 (its last row and column dropped), as in
    Eisenberger et al.'s code.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, iters: int, order: str) -> torch.Tensor:
        with torch.no_grad():
            p = log_sinkhorn(logits, iters, order).exp()
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor):
        (p,) = ctx.saved_tensors
        m, n = p.shape
        h = p * grad_p
        system = torch.cat(
            (
                torch.cat((torch.diag(p.sum(1)), p[:, :-1]), dim=1),
                torch.cat((p[:, :-1].T, torch.diag(p.sum(0)[:-1])), dim=1),
            ),
            dim=0,
        )
        rhs = torch.cat((h.sum(1), h.sum(0)[:-1]))
        solved = torch.linalg.solve(system, rhs)
        x, y = solved[:m], torch.cat((solved[m:], solved.new_zeros(1)))
        return h - p * (x[:, None] + y[None, :]), None, None


__all__ = ["SINKHORN_GRADIENTS", "SINKHORN_ORDERS", "ImplicitSinkhorn", "log_sinkhorn", "sinkhorn"]
