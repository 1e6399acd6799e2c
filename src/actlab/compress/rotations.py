"""Orthogonal rotations for outlier spreading: Hadamard matrices of any order we can build, and
seeded random orthogonal matrices (QuaRot, Ashkboos et al. 2024; SpinQuant's random baseline).

`hadamard(n)` returns H / sqrt(n) with H a ±1 Hadamard matrix of order n = 2^k · m, built as the
Kronecker product of Sylvester's 2^k matrix and a Paley matrix of order m: Paley I for
m = q + 1 (q prime, q ≡ 3 mod 4: 12, 20, 24, 32, 44, …) and Paley II for m = 2(q + 1)
(q prime, q ≡ 1 mod 4: 12, 28, 36, 60, …). That covers SmolLM2's 576 = 16 · 36 and 1536 = 128 · 12,
and Gemma-3 270M's 640 = 32 · 20. `rotation(n, "hadamard", seed)` multiplies by seeded random
signs (QuaRot's randomized Hadamard) so that different seeds give different rotations.
"""

from __future__ import annotations

import math

import torch

from actlab.errors import ActlabError


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % p for p in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = Legendre symbol of (j - i) mod q."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0] + [1 if a in squares else -1 for a in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    return chi[idx]


def _paley(m: int) -> torch.Tensor | None:
    """A ±1 Hadamard matrix of order m from Paley's constructions, or None."""
    q = m - 1
    if _is_prime(q) and q % 4 == 3:  # Paley I
        s = torch.zeros(m, m, dtype=torch.float64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, _jacobsthal(q)
        return s + torch.eye(m, dtype=torch.float64)
    if m % 2 == 0:
        q = m // 2 - 1
        if _is_prime(q) and q % 4 == 1:  # Paley II
            c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
            c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, _jacobsthal(q)
            a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
            b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
            return torch.kron(c, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)
    return None


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard(n: int) -> torch.Tensor:
    """The orthonormal Hadamard matrix H / sqrt(n) of order n (float64), or an `ActlabError` naming
    what orders are possible."""
    if n < 1:
        raise ActlabError(f"Hadamard order must be positive, got {n}")
    power = n & -n  # largest power of two dividing n
    k = power
    while k >= 1:
        m = n // k
        base = torch.ones(1, 1, dtype=torch.float64) if m == 1 else _paley(m)
        if base is not None:
            h = torch.kron(_sylvester(k), base)
            return h / math.sqrt(n)
        k //= 2
    raise ActlabError(f"no Hadamard construction for order {n} here (2^k times a Paley order); "
                      "use rotate(kind=random) for a random orthogonal rotation")


def random_orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian, signs fixed), float64, seeded."""
    g = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r))[None, :]


def rotation(n: int, kind: str = "hadamard", seed: int = 0) -> torch.Tensor:
    """An n × n orthogonal matrix: "hadamard" (randomized by seeded ±1 row signs) or "random"."""
    if kind == "hadamard":
        signs = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed)).double() * 2 - 1
        return signs[:, None] * hadamard(n)
    if kind == "random":
        return random_orthogonal(n, seed)
    raise ActlabError(f"rotation kind must be 'hadamard' or 'random', got {kind!r}")
