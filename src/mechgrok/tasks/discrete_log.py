"""Operation coordinates: every modular operation as addition on a cyclic group, by re-indexing the residues.

The Fourier analyses of modular addition (Nanda et al. 2023) rest on the label being a + b in Z_p. The other
operations become the same after re-indexing the input tokens a, b and the output class c (``beyond.md`` 4.7):

=========  =======  ==================================  ==================================================
operation  group    coordinates i, j of a, b; k of c    re-indexing
=========  =======  ==================================  ==================================================
add        Z_p      a = i, b = j, c = k                 none
sub        Z_p      a = i, b = -j, c = k                b negated: (a - b) = i + j
mul        Z_{p-1}  a = g^i, b = g^j, c = g^k           discrete logarithm to the primitive root g
div        Z_{p-1}  a = g^i, b = g^-j, c = g^k          discrete log, b negated: a / b = g^(i + j)
=========  =======  ==================================  ==================================================

so that ``op(a_tokens[i], b_tokens[j]) == c_classes[(i + j) % n]`` for every i, j in 0..n-1 (the defining
property, tested for every operation). For mul and div, g is the smallest primitive root of the prime p, the
group is the multiplicative group (Z/pZ)* of order n = p - 1 indexed by powers of g, and the residue 0 is left
out: the analyses in these coordinates see the (p-1) x (p-1) grid of non-zero pairs (for mul, the 2p - 1 pairs
with a zero factor, all labelled 0, are outside it; for div b = 0 is outside the task anyway). A Fourier
frequency in these coordinates is a character of the group: for mul, frequency k is the function
x -> exp(2 pi i k log_g(x) / (p - 1)) of the residue x, and k = (p - 1) / 2 is the Legendre symbol.

This module is the one place that re-indexes: :func:`coordinates` gives the index arrays,
:func:`coordinate_trajectory` the trajectory of a mul or div model re-indexed into an add or sub model on
Z_{p-1} (its ``W_E`` rows and ``W_U`` columns permuted), which the Fourier analyses then read unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import xarray as xr

from mechgrok.config import recorded
from mechgrok.errors import AnalysisError, ConfigError

__all__ = [
    "is_prime",
    "primitive_root",
    "discrete_log_table",
    "Coordinates",
    "coordinates",
    "operation_of",
    "coordinate_trajectory",
    "is_discrete_log",
]


def is_prime(n: int) -> bool:
    """Whether ``n`` is a prime (trial division; the moduli here are small).

    Examples
    --------
    >>> [n for n in range(20) if is_prime(n)]
    [2, 3, 5, 7, 11, 13, 17, 19]
    """
    n = int(n)
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


def primitive_root(p: int) -> int:
    """The smallest primitive root g of the prime p: the powers g^0 .. g^(p-2) run over every non-zero residue.

    Raises
    ------
    ConfigError
        If p is not an odd prime.

    Examples
    --------
    >>> primitive_root(7), primitive_root(59), primitive_root(113)
    (3, 2, 3)
    """
    if not is_prime(p) or p < 3:
        raise ConfigError(f"the multiplicative group needs an odd prime modulus, got p={p}")
    n = p - 1
    factors = [q for q in range(2, n + 1) if n % q == 0 and is_prime(q)]
    for g in range(2, p):
        if all(pow(g, n // q, p) != 1 for q in factors):
            return g
    raise ConfigError(f"no primitive root found for p={p}")  # unreachable for a prime


def discrete_log_table(p: int) -> tuple[int, np.ndarray, np.ndarray]:
    """The primitive root g, its powers and the discrete logarithm of every non-zero residue mod p.

    Returns
    -------
    g : int
        :func:`primitive_root`.
    powers : numpy.ndarray
        int64 (p - 1,): ``powers[i] = g^i mod p``.
    log : numpy.ndarray
        int64 (p,): ``log[x]`` with ``g^log[x] = x``; ``log[0] = -1`` (0 has none).

    Examples
    --------
    >>> g, powers, log = discrete_log_table(7)
    >>> g, powers.tolist(), log.tolist()
    (3, [1, 3, 2, 6, 4, 5], [-1, 0, 2, 1, 4, 5, 3])
    """
    g = primitive_root(p)
    powers = np.ones(p - 1, dtype=np.int64)
    for i in range(1, p - 1):
        powers[i] = powers[i - 1] * g % p
    log = np.full(p, -1, dtype=np.int64)
    log[powers] = np.arange(p - 1)
    return g, powers, log


@dataclass(frozen=True)
class Coordinates:
    """The coordinates in which an operation is addition on a cyclic group (module docstring).

    Attributes
    ----------
    operation : str
    p : int
    n : int
        The group's order: p (add, sub) or p - 1 (mul, div).
    a_tokens, b_tokens, c_classes : numpy.ndarray
        int64 (n,): the input token at coordinate i of position a, of position b, and the class at coordinate k;
        ``op(a_tokens[i], b_tokens[j]) == c_classes[(i + j) % n]``.
    generator : int or None
        The primitive root (mul, div).
    group : str
        ``"Z_p"`` or ``"Z_(p-1), discrete log to base g"``.
    """

    operation: str
    p: int
    n: int
    a_tokens: np.ndarray
    b_tokens: np.ndarray
    c_classes: np.ndarray
    generator: int | None
    group: str

    def describe(self) -> str:
        """One sentence for the attrs of a Dataset computed in these coordinates."""
        if self.operation == "add":
            return f"operation add: coordinates are the residues (Z_{self.p}), label i + j"
        if self.operation == "sub":
            return f"operation sub: b re-indexed as j = -b mod {self.p} (Z_{self.p}), label a - b = i + j"
        inv = "" if self.operation == "mul" else ", b re-indexed as j = -log_g(b)"
        return (f"operation {self.operation}: non-zero residues indexed by their discrete log to the primitive "
                f"root g = {self.generator} (Z_{self.n}){inv}, label log_g(c) = i + j mod {self.n}; residue 0 "
                "left out")


def coordinates(p: int, operation: str) -> Coordinates:
    """The :class:`Coordinates` of an operation mod p.

    Raises
    ------
    ConfigError
        For an unknown operation, or mul/div with a p that is not an odd prime.

    Examples
    --------
    >>> c = coordinates(7, "div")
    >>> c.n, c.a_tokens.tolist(), c.b_tokens.tolist()
    (6, [1, 3, 2, 6, 4, 5], [1, 5, 4, 6, 2, 3])
    >>> all(c.a_tokens[i] * pow(int(c.b_tokens[j]), 5, 7) % 7 == c.c_classes[(i + j) % 6]
    ...     for i in range(6) for j in range(6))
    True
    """
    p = int(p)
    if operation in ("add", "sub"):
        r = np.arange(p, dtype=np.int64)
        b = r if operation == "add" else (-r) % p
        return Coordinates(operation, p, p, r, b, r, None, f"Z_{p}")
    if operation in ("mul", "div"):
        g, powers, _ = discrete_log_table(p)
        n = p - 1
        b = powers if operation == "mul" else powers[(-np.arange(n)) % n]
        return Coordinates(operation, p, n, powers, b, powers, g, f"Z_{n}, discrete log to base {g}")
    raise ConfigError(f"unknown operation {operation!r}; known: add, sub, mul, div")


def operation_of(attrs: Mapping[str, Any]) -> str:
    """The operation of a modular trajectory from its attrs: ``operation``, else its config's, else ``"add"``.

    Examples
    --------
    >>> operation_of({"config_json": '{"operation": "mul"}'})
    'mul'
    """
    return str(recorded(attrs, "operation", "add"))


def coordinate_trajectory(ds: xr.Dataset) -> xr.Dataset:
    """A trajectory in its operation's coordinates, where the label is (i + j) mod n (module docstring).

    * add: returned as it is.
    * sub: ``is_train`` has its b axis re-indexed (column j is the pair with b = -j); the weights are
      unchanged, and the grid pass re-indexes b likewise (:func:`mechgrok.analyses.modular.grid.grid_options`).
    * mul, div: re-indexed by discrete logarithms into an add (mul) or sub (div) model on Z_(p-1): ``W_E``
      keeps the rows of the non-zero residues in the order g^0, g^1, ..., g^(p-2) (then ``=``, if the model has
      it), ``W_U`` the columns of the same classes (then ``=``), and ``is_train`` the (p-1) x (p-1) non-zero
      pairs (columns in the order of the pair's coordinate j); every other weight is unchanged. The result
      computes exactly the original model's logits on the non-zero pairs, for the non-zero classes (class 0 is
      left out of the softmax).

    ``attrs``: ``operation_coordinates`` (how), and for mul and div ``p`` = p - 1, ``operation`` add (mul) or
    sub (div) and ``source_p``. A trajectory already in coordinates is returned as it is.

    Raises
    ------
    AnalysisError
        If the trajectory has no p, or its p is not an odd prime for mul/div.

    Examples
    --------
    >>> import numpy as np
    >>> W_E = np.arange(8.0).reshape(1, 8, 1)  # p = 7 and '=': token t has embedding t
    >>> ds = xr.Dataset({"W_E": (("checkpoint", "vocab", "d_model"), W_E)}, attrs={"p": 7, "operation": "mul"})
    >>> coordinate_trajectory(ds)["W_E"].values[0, :, 0].tolist()  # 3^0, 3^1, ... mod 7, then '='
    [1.0, 3.0, 2.0, 6.0, 4.0, 5.0, 7.0]
    """
    op = operation_of(ds.attrs)
    if op == "add" or "operation_coordinates" in ds.attrs:
        return ds
    if "p" not in ds.attrs:
        raise AnalysisError("the trajectory has no modulus p (attrs['p'])")
    p = int(ds.attrs["p"])
    try:
        co = coordinates(p, op)
    except ConfigError as e:
        raise AnalysisError(e.reason) from None
    out = ds
    attrs = dict(ds.attrs)
    attrs["operation_coordinates"] = co.describe()
    if op in ("mul", "div"):
        if "W_E" in ds:
            out = out.isel(vocab=np.concatenate([co.a_tokens, np.arange(p, ds.sizes["vocab"])]))
        if "W_U" in ds:
            out = out.isel(vocab_out=np.concatenate([co.c_classes, np.arange(p, ds.sizes["vocab_out"])]))
        attrs.update(p=co.n, source_p=p, operation="add" if op == "mul" else "sub")
    if "is_train" in ds:
        out = out.isel(a=co.a_tokens, b=co.b_tokens).assign_coords(a=np.arange(co.n), b=np.arange(co.n))
    return out.assign_attrs(attrs)


def is_discrete_log(attrs: Mapping[str, Any]) -> bool:
    """Whether a trajectory (or analysis) is in discrete-log coordinates (:func:`coordinate_trajectory`): its p is
    then the even order p - 1 of the multiplicative group, which the Fourier analyses accept.

    Examples
    --------
    >>> is_discrete_log({"p": 52, "source_p": 53}), is_discrete_log({"p": 53})
    (True, False)
    """
    return "source_p" in attrs and int(attrs["p"]) == int(attrs["source_p"]) - 1
