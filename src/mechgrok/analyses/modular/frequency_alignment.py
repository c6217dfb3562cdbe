"""Alignment of token-indexed vectors with the 2-D Fourier subspaces, at every checkpoint (beyond.md 3.4).

The mod-add analogue of the vector-competition toy (:mod:`mechgrok.toys.vector_competition`): "vectors" are
token-indexed maps w in R^p (the ``=`` token dropped), in four **families**:

``neuron_in`` (dims ``neuron``)
    each neuron's direct input map, column j of W_E[:p] W_in (p, d_mlp);
``neuron_ov`` (dims ``head``, ``neuron``)
    each neuron's OV-path map through head h, column j of W_neur[h] = W_E[:p] W_V[h] W_O[h] W_in (paper.md 3.6);
``W_E_rows`` (dims ``d_model``)
    each residual coordinate as a function of the token, column m of W_E[:p];
``W_E_pca`` (dims ``component``)
    the principal directions of W_E[:p] = U S V^T, u_i s_i for the ``n_components`` largest singular values, in
    order of the singular value at each checkpoint (their identity is not tracked across checkpoints).

The **targets** are the 2-D Fourier subspaces F_k = span{cos k, sin k} of the orthonormal basis of
:func:`mechgrok.analyses.modular.fourier.fourier_basis`, k = 1..(p-1)/2:

* power ``||P_{F_k} w_j||^2 = (F_{2k-1} . w_j)^2 + (F_{2k} . w_j)^2``;
* alignment ``A_jk = ||P_{F_k} w_j|| / ||w_j||`` (``||w_j||`` includes the constant component);
* aggregate ``N_k = sum_j ||P_{F_k} w_j||^2``; for ``W_E_rows`` it is the squared per-frequency embedding norm
  n_{cos k}^2 + n_{sin k}^2 (:mod:`~mechgrok.analyses.modular.fourier_norms`, paper.md 3.2);
* per-vector spectrum q_jk = power_jk / sum_k power_jk, its **spectral entropy** H_j = -sum_k q_jk ln q_jk
  (nats; 0 for one frequency, ln((p-1)/2) for a flat spectrum) and **dominant frequency** argmax_k power_jk
  (beyond.md 4.2-4.3).

Per-vector arrays are stored as float32 (they are large: (head, d_mlp, freq) per checkpoint); the aggregates N_k
and the family norms are summed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from mechgrok.analyses.modular.fourier import check_odd_p, fourier_basis
from mechgrok.analyses.modular.grid import model_p
from mechgrok.engine import DEFAULT_CHUNK, Checkpoint, run
from mechgrok.errors import AnalysisError

__all__ = ["FAMILIES", "FAMILY_DIMS", "FrequencyAlignment", "alignment_from_power", "frequency_alignment",
           "singular_vectors"]

#: The vector families and the trajectory weights each needs.
FAMILIES: dict[str, tuple[str, ...]] = {
    "neuron_in": ("W_E", "W_in"),
    "neuron_ov": ("W_E", "W_V", "W_O", "W_in"),
    "W_E_rows": ("W_E",),
    "W_E_pca": ("W_E",),
}

#: The dims that index the vectors of each family.
FAMILY_DIMS: dict[str, tuple[str, ...]] = {
    "neuron_in": ("neuron",),
    "neuron_ov": ("head", "neuron"),
    "W_E_rows": ("d_model",),
    "W_E_pca": ("component",),
}

_WHAT = {
    "neuron_in": "neuron j's direct input map (W_E[:p] W_in)[:, j]",
    "neuron_ov": "neuron j's OV-path map through head h, (W_E[:p] W_V[h] W_O[h] W_in)[:, j]",
    "W_E_rows": "residual coordinate m of the embedding, W_E[:p, m]",
    "W_E_pca": "principal direction i of W_E[:p], u_i s_i",
}


def frequency_alignment(
    ds: xr.Dataset,
    *,
    families: tuple[str, ...] = tuple(FAMILIES),
    n_components: int = 8,
    chunk: int = DEFAULT_CHUNK,
) -> xr.Dataset:
    """Per-vector Fourier alignments A_jk(t) and per-frequency aggregates N_k(t) of the vector families.

    beyond.md 3.4 (a proposal, following the comment thread of Jermyn & Shlegeris 2022); the spectral entropy
    and dominant frequency of beyond.md 4.2-4.3.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical one-layer trajectory with an odd ``attrs["p"]`` and the weights the families need.
    families : tuple of str
        Any of ``"neuron_in"``, ``"neuron_ov"``, ``"W_E_rows"``, ``"W_E_pca"`` (default all).
    n_components : int
        Principal directions of W_E kept in ``W_E_pca`` (at most min(p, d_model)).
    chunk : int
        Checkpoints read at once.

    Returns
    -------
    xarray.Dataset
        For each family f (vector dims as in :data:`FAMILY_DIMS`), over ``checkpoint`` (epochs) and ``freq``
        (k = 1..(p-1)/2): ``f_power`` (checkpoint, *vec, freq): ||P_{F_k} w_j||^2 (weight^2, float32);
        ``f_alignment`` (checkpoint, *vec, freq): A_jk (fraction of the norm, float32); ``f_vector_norm_sq``
        (checkpoint, *vec): ||w_j||^2 (weight^2); ``f_N``
        (checkpoint, freq): N_k (weight^2); ``f_norm_sq`` (checkpoint,): sum_j ||w_j||^2 (weight^2);
        ``f_entropy`` (checkpoint, *vec): spectral entropy (nats); ``f_dominant_freq`` (checkpoint, *vec).

    Raises
    ------
    AnalysisError
        If p is missing or even, a family is unknown, or a weight is missing.

    Examples
    --------
    A planted embedding whose coordinate 0 is cos(2 pi 3 x / 7):

    >>> import numpy as np, xarray as xr
    >>> W_E = np.zeros((1, 8, 2)); W_E[0, :7, 0] = np.cos(2 * np.pi * 3 * np.arange(7) / 7)
    >>> ds = xr.Dataset({"W_E": (("checkpoint", "vocab", "d_model"), W_E)}, coords={"checkpoint": [0]},
    ...                 attrs={"p": 7})
    >>> fa = frequency_alignment(ds, families=("W_E_rows",))
    >>> fa["W_E_rows_alignment"].sel(d_model=0).round(6).values.tolist(), int(fa["W_E_rows_dominant_freq"][0, 0])
    ([[0.0, 0.0, 1.0]], 3)
    """
    k = FrequencyAlignment.for_trajectory(ds, families=families, n_components=n_components)
    return run(ds, [k], chunk=chunk, device="cpu")[k.name]


def alignment_from_power(power: np.ndarray, vector_norm_sq: np.ndarray) -> np.ndarray:
    """The alignments A_jk = sqrt(P_jk / ||w_j||^2) from Fourier powers and squared vector norms.

    Parameters
    ----------
    power : numpy.ndarray
        ``f_power`` values, shape (..., freq) (weight^2).
    vector_norm_sq : numpy.ndarray
        ``f_vector_norm_sq`` values, the same shape without ``freq`` (weight^2).

    Returns
    -------
    numpy.ndarray
        float32, the shape of ``power``; 0 where a vector is zero.

    Examples
    --------
    >>> alignment_from_power(np.array([[3.0, 1.0], [0.0, 0.0]]), np.array([4.0, 0.0])).tolist()
    [[0.8660253882408142, 0.5], [0.0, 0.0]]
    """
    power = np.asarray(power)
    nsq = np.asarray(vector_norm_sq, dtype=np.float64)[..., None]
    a = np.zeros(np.broadcast_shapes(power.shape, nsq.shape), dtype=np.float64)
    np.divide(power, nsq, out=a, where=nsq > 0)
    return np.sqrt(a, out=a).astype(np.float32)


def singular_vectors(X: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The leading k left singular vectors U (..., n, k) and singular values S (..., k) of each matrix of X
    (..., n, d), descending; k = min(n, d) by default (the thin SVD's U and S).

    Each matrix is decomposed on its own, from a fresh copy: LAPACK's rounding depends on where the operand
    sits in memory, and a checkpoint's results must not depend on the others batched with it. With k < min(n, d)
    they come from the symmetric eigendecomposition of the n x n Gram matrix X X^T (about 2.5 times faster than
    the SVD at 113 x 128); its rounding error in a singular vector is about eps sigma_1^2 / (sigma_i^2 -
    sigma_(i+1)^2), negligible for the leading, well separated ones. Signs are arbitrary, as the SVD's.

    Examples
    --------
    >>> X = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]], dtype=torch.float64)
    >>> U, S = singular_vectors(X)
    >>> S.tolist()
    [[4.0, 3.0]]
    >>> U, S = singular_vectors(torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 1.0]],
    ...                                      dtype=torch.float64), k=2)
    >>> S.tolist(), U.abs().tolist()
    ([4.0, 3.0], [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    """
    n, d = X.shape[-2:]
    r = min(n, d) if k is None else min(int(k), n, d)
    flat = X.reshape(-1, n, d)
    if r < min(n, d):
        parts = []
        for m in flat:
            m = m.clone()
            lam, vec = torch.linalg.eigh(m @ m.T)  # ascending
            parts.append((vec[:, -r:].flip(-1), lam[-r:].flip(-1).clamp_min(0).sqrt()))
    else:
        parts = [torch.linalg.svd(m.clone(), full_matrices=False)[:2] for m in flat]
    if not parts:
        return X.new_empty(*X.shape[:-1], r), X.new_empty(*X.shape[:-2], r)
    U = torch.stack([u for u, _ in parts]).reshape(*X.shape[:-1], r)
    S = torch.stack([s_ for _, s_ in parts]).reshape(*X.shape[:-2], r)
    return U, S


@dataclass
class FrequencyAlignment:
    """Engine kernel (:mod:`mechgrok.engine`): Fourier powers of the vector families of one checkpoint."""

    p: int
    families: tuple[str, ...]
    n_components: int = 8
    alignment: bool = True
    name: str = "frequency_alignment"
    weights: tuple[str, ...] | None = ()
    needs: frozenset[str] = frozenset()

    @classmethod
    def for_trajectory(
        cls, ds: xr.Dataset, *, families: tuple[str, ...] = tuple(FAMILIES), n_components: int = 8,
        alignment: bool = True,
    ) -> "FrequencyAlignment":
        """The kernel for a trajectory; ``alignment=False`` leaves the per-vector alignments A_jk out of the
        result (derivable from ``f_power`` and ``f_vector_norm_sq`` by :func:`alignment_from_power`; ``mechgrok
        analyze`` derives them block by block, which keeps the (checkpoint, head, d_mlp, freq) array once, not twice).

        Raises
        ------
        AnalysisError
            If p is missing or even, a family is unknown or ``n_components`` < 1.
        """
        p = check_odd_p(model_p(ds))
        bad = [f for f in families if f not in FAMILIES]
        if bad or not families:
            raise AnalysisError(f"unknown vector families {bad}; known: {', '.join(FAMILIES)}")
        if int(n_components) < 1:
            raise AnalysisError(f"n_components must be >= 1, got {n_components}")
        need = sorted({w for f in families for w in FAMILIES[f]})
        n_comp = int(n_components)
        if "W_E_pca" in families and "W_E" in ds:
            n_comp = min(n_comp, p, int(ds.sizes.get("d_model", n_comp)))
        return cls(p=p, families=tuple(families), n_components=n_comp, alignment=bool(alignment), weights=tuple(need))

    def _basis(self) -> torch.Tensor:
        F = getattr(self, "_F", None)
        if F is None:
            F = torch.from_numpy(np.ascontiguousarray(fourier_basis(self.p).values, dtype=np.float64))
            self._F = F
        return F

    def transforms(self, w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The Fourier transform over tokens of each family's vectors, (c, fourier, *vec) float64, from the
        weights of c checkpoints (shapes (c, ...)).

        Every family is a product W_E[:p] X (X = W_in, W_V[h] W_O[h] W_in, the identity, or the right factor of
        the SVD), so its transform is (F W_E[:p]) X with F the orthonormal basis: one p x p product with W_E
        instead of one with every family (2,700 vectors at the paper's widths).
        """
        p = self.p
        W_E = w["W_E"][:, :p].to("cpu", torch.float64)  # (c, p, d_model)
        FE = self._basis() @ W_E  # (c, fourier, d_model)
        out: dict[str, torch.Tensor] = {}
        if "neuron_in" in self.families:
            out["neuron_in"] = FE @ w["W_in"].to("cpu", torch.float64)  # (c, fourier, d_mlp)
        if "neuron_ov" in self.families:
            VO = w["W_V"].to("cpu", torch.float64) @ w["W_O"].to("cpu", torch.float64)  # (c, head, d_model, d_model)
            c, h, d = VO.shape[:3]
            FVO = torch.einsum("cfm,chmn->cfhn", FE, VO)  # (c, fourier, head, d_model), contiguous
            ov = FVO.reshape(c, p * h, d) @ w["W_in"].to("cpu", torch.float64)  # (c, fourier * head, d_mlp)
            out["neuron_ov"] = ov.view(c, p, h, -1)  # (c, fourier, head, d_mlp)
        if "W_E_rows" in self.families:
            out["W_E_rows"] = FE
        if "W_E_pca" in self.families:
            U, S = singular_vectors(W_E, self.n_components)  # W_E = U S V^T: u_i s_i = W_E v_i
            out["W_E_pca"] = self._basis() @ (U * S[:, None])
        return out

    def spectra(self, w: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Every per-checkpoint value of the kernel for c checkpoints (weights (c, ...)), each with a leading c.

        ||w_j||^2 is taken in the Fourier basis (orthonormal: the constant component plus every frequency's power).
        """
        K = (self.p - 1) // 2
        res: dict[str, np.ndarray] = {}
        for fam, hat in self.transforms(w).items():
            c, shape = hat.shape[0], hat.shape[2:]
            hat = hat.reshape(c, self.p, -1)  # (c, fourier, n)
            power = hat[:, 1:].reshape(c, K, 2, -1).square().sum(2)  # (c, freq, n), float64
            tot = power.sum(1)  # (c, n)
            nsq = tot + hat[:, 0].square()  # (c, n)
            res[f"{fam}_power"] = power.transpose(1, 2).reshape(c, *shape, K).numpy().astype(np.float32)  # large
            res[f"{fam}_N"] = power.sum(2).numpy()  # float64 sums
            res[f"{fam}_norm_sq"] = nsq.sum(1).numpy()
            res[f"{fam}_vector_norm_sq"] = nsq.reshape(c, *shape).numpy()
            q = power / torch.where(tot > 0, tot, torch.ones_like(tot))[:, None]
            res[f"{fam}_entropy"] = (-torch.xlogy(q, q).sum(1)).reshape(c, *shape).numpy().astype(np.float32)
            res[f"{fam}_dominant_freq"] = power.argmax(1).reshape(c, *shape).numpy().astype(np.int64) + 1
        return res

    def __call__(self, ck: Checkpoint) -> dict[str, np.ndarray]:
        # batched over the chunk: per checkpoint, these small products and reductions cost more in calls than in work
        return ck.batched((self.name, self.families, self.n_components), self.spectra)

    def assemble(self, values: dict[str, np.ndarray], checkpoint: xr.DataArray) -> xr.Dataset:
        K = (self.p - 1) // 2
        data: dict[str, tuple] = {}
        for fam in self.families:
            vd = FAMILY_DIMS[fam]
            power = values[f"{fam}_power"]  # (checkpoint, *vec, freq) float32
            what = _WHAT[fam]
            dims = ("checkpoint", *vd, "freq")
            data[f"{fam}_power"] = (dims, power, {
                "units": "weight^2", "description": f"||P_F_k w_j||^2, w_j = {what}"})
            data[f"{fam}_vector_norm_sq"] = ((("checkpoint", *vd)), values[f"{fam}_vector_norm_sq"], {
                "units": "weight^2", "description": f"||w_j||^2 (constant component included), w_j = {what}"})
            if self.alignment:
                data[f"{fam}_alignment"] = (dims, alignment_from_power(power, values[f"{fam}_vector_norm_sq"]), {
                    "units": "fraction", "description": f"A_jk = ||P_F_k w_j|| / ||w_j||, w_j = {what}"})
            data[f"{fam}_N"] = (("checkpoint", "freq"), values[f"{fam}_N"], {
                "units": "weight^2", "description": f"N_k = sum_j ||P_F_k w_j||^2 over {fam} vectors"})
            data[f"{fam}_norm_sq"] = (("checkpoint",), values[f"{fam}_norm_sq"], {
                "units": "weight^2", "description": f"sum_j ||w_j||^2 over {fam} vectors (constant component included)"})
            data[f"{fam}_entropy"] = (("checkpoint", *vd), values[f"{fam}_entropy"], {
                "units": "nats", "description": "spectral entropy -sum_k q_jk ln q_jk, q_jk = power_jk / sum_k power_jk"})
            data[f"{fam}_dominant_freq"] = (("checkpoint", *vd), values[f"{fam}_dominant_freq"], {
                "units": "", "description": "argmax_k ||P_F_k w_j||^2"})
        coords = {"checkpoint": ("checkpoint", np.asarray(checkpoint.values), dict(checkpoint.attrs)),
                  "freq": np.arange(1, K + 1)}
        return xr.Dataset(data, coords=coords, attrs={
            "title": "mechgrok Fourier alignment of vector families",
            "families": list(self.families),
            "n_components": int(self.n_components),
            "p": int(self.p),
            "basis": "orthonormal Fourier basis, F_k = span{cos k, sin k}; the '=' token dropped",
            "source": "after Jermyn & Shlegeris 2022, Multi-Component Learning and S-Curves (alignment A_jk, aggregate N_k); spectral entropy and dominant frequency",
        })
