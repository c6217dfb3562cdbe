"""Figure functions take plain Datasets as well as the analysis tree (issue 11, "one composable API").

Each figure is drawn from the Dataset an analysis function returns (``mechgrok.neuron_clusters(ds)``,
``mechgrok.progress_measures(ds, key_freqs=...)``, ``mechgrok.open_run(run)``, the tree's ``reference`` group, ...)
and the numbers read back from the matplotlib Figure (line data, image arrays, bar heights) are checked against
that Dataset; the same figure from the analysis tree plots the same numbers. A Dataset without a variable the
figure needs raises AnalysisError naming the variable and the function producing it. The loss curves are drawn
over the epochs each curve was logged at (a test loss logged every 10 epochs is NaN in between on the shared
``epoch`` dim, docs/store.md "Curves").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from matplotlib.container import BarContainer

import mechgrok
from mechgrok.errors import AnalysisError
from mechgrok.figures import (
    animate_neuron_frequencies,
    animate_W_E_fourier_norms,
    fig_attention,
    fig_fourier_norms,
    fig_fourier_norms_over_training,
    fig_fourier_spectra_2d,
    fig_key_frequency_ablations,
    fig_loss_curves,
    fig_neuron_activations,
    fig_neuron_clusters,
    fig_progress_measures,
    fig_W_logit_per_cluster,
    save_gif,
)
from mechgrok.figures.analysis import group
from mechgrok.figures.fourier_norms import cos_sin_norms

from planted import paper_state_dict

EVERY = 10  # a subsample of the fixture's 61 checkpoints (every 10th: 7 checkpoints, the last included)


@pytest.fixture(scope="module")
def sub(fixture_trajectory) -> xr.Dataset:
    """A few checkpoints of the committed run, the last included (the analysis tree's reference checkpoint)."""
    n = fixture_trajectory.sizes["checkpoint"]
    return fixture_trajectory.isel(checkpoint=sorted(set(range(0, n, EVERY)) | {n - 1}))


@pytest.fixture(scope="module")
def keys(fixture_analysis) -> list[int]:
    return [int(k) for k in fixture_analysis.attrs["key_freqs"]]


@pytest.fixture(scope="module")
def progress(sub, keys) -> xr.Dataset:
    return mechgrok.progress_measures(sub, key_freqs=keys)


@pytest.fixture(scope="module")
def clusters(sub) -> xr.Dataset:
    return mechgrok.neuron_clusters(sub)


def _lines(ax) -> dict[str, object]:
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def _at(ln, epochs) -> np.ndarray:
    """A line's y values at the given epochs (of its x data)."""
    x = np.asarray(ln.get_xdata())
    idx = [int(np.flatnonzero(x == e)[0]) for e in epochs]
    return np.asarray(ln.get_ydata())[idx]


def _bars(ax, label: str | None = None) -> list:
    conts = [c for c in ax.containers if isinstance(c, BarContainer) and (label is None or c.get_label() == label)]
    return [r for c in conts for r in c]


# ---------------------------------------------------------------------------------------------------------------
# Over training: progress measures, ablations, Fourier norms


def test_progress_measures_from_the_dataset_of_progress_measures(progress, fixture_analysis, sub):
    fig = fig_progress_measures(progress)
    ax = fig.axes
    x = progress["checkpoint"].values
    for i, label, var in [(0, "excluded loss", "excluded_loss_full"), (0, "train loss", "loss_train"),
                          (1, "restricted loss", "restricted_loss_all"), (2, "test loss", "loss_test"),
                          (3, "W_E", "gini_W_E_component"), (3, "W_logit", "gini_W_logit_component"),
                          (4, "all parameters", "sum_sq_weights_total"), (5, "restricted", "restricted_acc_all")]:
        ln = _lines(ax[i])[label]
        np.testing.assert_array_equal(ln.get_xdata(), x)
        np.testing.assert_array_equal(ln.get_ydata(), progress[var].values, err_msg=f"{label} ({var})")
    assert ", ".join(map(str, progress.attrs["key_freqs"])) in fig.get_suptitle()
    # the tree plots the same numbers at these checkpoints (same float64 pass: equal to rounding)
    tree_fig = fig_progress_measures(fixture_analysis)
    for i in range(6):
        tree_lines = _lines(tree_fig.axes[i])
        for label, ln in _lines(ax[i]).items():
            np.testing.assert_allclose(_at(tree_lines[label], x), ln.get_ydata(), rtol=1e-9, atol=1e-12,
                                       err_msg=f"panel {i}, {label}")


def test_progress_measures_draw_the_llc_of_the_dataset(progress):
    n = progress.sizes["checkpoint"]
    fig = fig_progress_measures(progress.assign(llc_mean=("checkpoint", np.arange(n, dtype=float)),
                                                llc_std=("checkpoint", np.full(n, 0.5))))
    titles = [a.get_title() for a in fig.axes]
    assert "Local learning coefficient" in titles and "Accuracy" not in titles
    ln = _lines(fig.axes[titles.index("Local learning coefficient")])["LLC (mean)"]
    np.testing.assert_array_equal(ln.get_ydata(), np.arange(progress.sizes["checkpoint"]))


def test_key_frequency_ablations_from_the_progress_measures(progress, keys, fixture_analysis):
    ab = progress  # the ablation variables of mechgrok.ablation_losses, from the same float64 pass
    fig = fig_key_frequency_ablations(ab)
    left, right = (_lines(a) for a in fig.axes[:2])
    x = ab["checkpoint"].values
    for k in keys:
        np.testing.assert_array_equal(left[f"k = {k} removed"].get_xdata(), x)
        np.testing.assert_array_equal(left[f"k = {k} removed"].get_ydata(), ab["excluded_loss"].sel(key_freq=k).values)
    np.testing.assert_array_equal(left["all key removed"].get_ydata(), ab["excluded_loss_full"].values)
    for split in ("all", "train", "test"):
        np.testing.assert_array_equal(right[f"restricted, {split} pairs"].get_ydata(),
                                      ab[f"restricted_loss_{split}"].values)
    tree = fig_key_frequency_ablations(fixture_analysis)
    for mine, theirs in zip(fig.axes[:2], tree.axes[:2]):
        theirs = _lines(theirs)
        for label, ln in _lines(mine).items():
            np.testing.assert_allclose(_at(theirs[label], x), ln.get_ydata(), rtol=1e-9, err_msg=label)


def test_fourier_norms_from_the_dataset(progress, fixture_analysis):
    """Bars of W_E and W_logit at the last checkpoint (no reference_checkpoint in the Dataset's attrs)."""
    last = int(progress["checkpoint"].values[-1])
    fig = fig_fourier_norms(progress)
    assert f"epoch {last}" in fig.get_suptitle()
    tree_fig = fig_fourier_norms(fixture_analysis)
    assert int(fixture_analysis.attrs["reference_checkpoint"]) == last
    for ax, tree_ax, var in zip(fig.axes[:2], tree_fig.axes[:2], ("W_E_fourier_norm", "W_logit_fourier_norm")):
        const, cos, sin = cos_sin_norms(progress[var].sel(checkpoint=last))
        got = {lab: [r.get_height() for r in _bars(ax, lab)] for lab in ("const", "cos k", "sin k")}
        np.testing.assert_array_equal(got["const"], [const])
        np.testing.assert_array_equal(got["cos k"], cos)
        np.testing.assert_array_equal(got["sin k"], sin)
        theirs = {lab: [r.get_height() for r in _bars(tree_ax, lab)] for lab in ("const", "cos k", "sin k")}
        for lab in got:
            np.testing.assert_allclose(theirs[lab], got[lab], rtol=1e-6, err_msg=f"{var} {lab}")
    # the key frequencies of the Dataset's attrs are marked: a major tick at const and at each key frequency
    assert list(fig.axes[0].get_xticks()) == [0] + sorted(progress.attrs["key_freqs"])


def test_fourier_norms_over_training_from_the_dataset(sub, fixture_analysis):
    from mechgrok.analyses.modular.fourier_norms import fourier_norms

    fn = fourier_norms(sub)
    fig = fig_fourier_norms_over_training(fn)
    for ax, var in zip(fig.axes, ("W_E_freq_norm", "W_logit_freq_norm")):
        mesh = ax.collections[0]
        np.testing.assert_array_equal(np.asarray(mesh.get_array()).ravel(),
                                      fn[var].transpose("freq", "checkpoint").values.ravel())
    assert f"p = {fn.attrs['p']}" in fig.get_suptitle()
    tree_fig = fig_fourier_norms_over_training(fixture_analysis)
    cols = np.searchsorted(fixture_analysis["fourier_norms"]["checkpoint"].values, fn["checkpoint"].values)
    n_freq = fn.sizes["freq"]
    for ax, tree_ax in zip(fig.axes[:2], tree_fig.axes[:2]):
        mine = np.asarray(ax.collections[0].get_array()).reshape(n_freq, -1)
        theirs = np.asarray(tree_ax.collections[0].get_array()).reshape(n_freq, -1)[:, cols]
        np.testing.assert_allclose(theirs, mine, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Neurons


def test_neuron_clusters_from_neuron_clusters(clusters, fixture_analysis, keys):
    last = int(clusters["checkpoint"].values[-1])
    at = clusters.sel(checkpoint=last)
    fig = fig_neuron_clusters(clusters)
    hist, sizes, over = fig.axes[:3]
    counts, _ = np.histogram(at["frac_explained"].values, bins=np.linspace(0, 1, 26))
    np.testing.assert_array_equal([r.get_height() for r in _bars(hist)], counts)
    cluster = at["cluster"].values
    names = [t.get_text() for t in sizes.get_xticklabels()]
    expected = [int((cluster == (-1 if n == "none" else int(n))).sum()) for n in names]
    np.testing.assert_array_equal([r.get_height() for r in _bars(sizes)], expected)
    assert sum(expected) == cluster.size and f"epoch {last}" in hist.get_title()
    lines = _lines(over)  # no key_freqs in the attrs of neuron_clusters: every cluster is "other k"
    np.testing.assert_array_equal(lines["unexplained"].get_ydata(),
                                  clusters["cluster_sizes"].sel(cluster_freq=-1).values)
    np.testing.assert_array_equal(lines["other k"].get_ydata(),
                                  clusters["cluster_sizes"].drop_sel(cluster_freq=-1).sum("cluster_freq").values)
    # with the key frequencies in its attrs, the same lines as the tree's figure
    mine = fig_neuron_clusters(clusters.assign_attrs(key_freqs=keys))
    theirs = fig_neuron_clusters(fixture_analysis)
    for k in keys:
        np.testing.assert_array_equal(_lines(mine.axes[2])[f"k = {k}"].get_ydata(),
                                      clusters["cluster_sizes"].sel(cluster_freq=k).values)
    for a, b in zip(mine.axes[:3], theirs.axes[:3]):
        assert [r.get_height() for r in _bars(a)] == [r.get_height() for r in _bars(b)]
        assert [t.get_text() for t in a.get_xticklabels()] == [t.get_text() for t in b.get_xticklabels()]
    x = clusters["checkpoint"].values
    for label, ln in _lines(mine.axes[2]).items():
        np.testing.assert_array_equal(ln.get_xdata(), x)
        np.testing.assert_array_equal(ln.get_ydata(), _at(_lines(theirs.axes[2])[label], x), err_msg=label)


def test_neuron_clusters_from_the_reference_group(fixture_analysis):
    ref = fixture_analysis["reference"].to_dataset()
    fig = fig_neuron_clusters(ref)
    assert len(fig.axes) == 2  # no clusters over training in the reference group
    cluster = ref["cluster"].values
    assert sum(r.get_height() for r in _bars(fig.axes[1])) == cluster.size
    # a tree node that is the group itself works too
    node = fig_neuron_clusters(fixture_analysis["reference"])
    assert [r.get_height() for r in _bars(node.axes[1])] == [r.get_height() for r in _bars(fig.axes[1])]


@pytest.mark.parametrize("make", [lambda t: t["reference"].to_dataset(), lambda t: t],
                         ids=["reference Dataset", "tree"])
def test_reference_figures_plot_the_reference_values(fixture_analysis, make):
    obj = make(fixture_analysis)
    ref = fixture_analysis["reference"].to_dataset()
    keys = [int(k) for k in ref.attrs["key_freqs"]]
    cluster = ref["cluster"].values
    # W_logit per cluster: one image per key frequency with a member, its columns the cluster's neurons
    fig = fig_W_logit_per_cluster(obj)
    shown = [k for k in keys if (cluster == k).any()]
    W = ref["W_logit_fourier"].transpose("fourier", "d_mlp").values
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == len(shown) > 0
    for im, k in zip(images, shown):
        np.testing.assert_array_equal(im.get_array(), W[:, cluster == k])
    # neuron activations: each example divided by its maximum
    fig = fig_neuron_activations(obj)
    acts = ref["neuron_acts"].transpose("example", "a", "b").values
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == acts.shape[0]
    freq = ref["example_freq"].values
    order = [e for k in dict.fromkeys(freq.tolist()) for e in np.flatnonzero(freq == k)]
    for im, e in zip(images, order):
        np.testing.assert_allclose(im.get_array(), acts[e] / acts[e].max())
    # 2D spectra: the logits' map first
    fig = fig_fourier_spectra_2d(obj)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(),
                                  ref["logits_fourier_norm"].transpose("fa", "fb").values)
    # attention: one map per head
    fig = fig_attention(obj)
    attn = ref["attn_to_a"].transpose("head", "a", "b").values
    for h in range(attn.shape[0]):
        np.testing.assert_array_equal(fig.axes[h].images[0].get_array(), attn[h])
    titles = [fig.axes[h].get_title() for h in range(attn.shape[0])]
    if isinstance(obj, xr.DataTree):  # the fitted frequency comes from the tree's attention group
        assert all("k = " in t for t in titles)
    else:
        assert all("k = " not in t for t in titles)
    assert f"epoch {ref.attrs['checkpoint']}" in fig.get_suptitle()


def test_attention_with_the_fit_merged_in(fixture_analysis):
    ref = fixture_analysis["reference"].to_dataset()
    fit = fixture_analysis["attention"].to_dataset().sel(checkpoint=ref.attrs["checkpoint"])
    fig = fig_attention(xr.merge([ref, fit[["head_freq", "head_fve"]].drop_vars("checkpoint")],
                                 combine_attrs="override"))
    for h, k in enumerate(fit["head_freq"].values):
        assert f"k = {int(k)}" in fig.axes[h].get_title()


# ---------------------------------------------------------------------------------------------------------------
# Animations


def test_animations_from_plain_datasets(clusters, progress, tmp_path):
    anim = animate_neuron_frequencies(clusters, max_frames=2)
    bars = _bars(anim._fig.axes[1])
    sizes0 = clusters["cluster_sizes"].isel(checkpoint=0)
    assert [r.get_height() for r in bars][-1] == int(sizes0.sel(cluster_freq=-1))
    assert not anim._fig.axes[2].axison  # no losses in the Dataset: the strip is off
    save_gif(anim, tmp_path / "n.gif", dpi=20)
    anim = animate_W_E_fourier_norms(progress, max_frames=2)
    strip = _lines(anim._fig.axes[1])
    np.testing.assert_array_equal(strip["train"].get_ydata(), progress["loss_train"].values)
    const, cos, sin = cos_sin_norms(progress["W_E_fourier_norm"].isel(checkpoint=0))
    np.testing.assert_array_equal([r.get_height() for r in _bars(anim._fig.axes[0], "cos k")], cos)
    save_gif(anim, tmp_path / "w.gif", dpi=20)
    assert (tmp_path / "n.gif").stat().st_size > 0 and (tmp_path / "w.gif").stat().st_size > 0


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_a_missing_variable_is_named_with_its_producer(progress, clusters, fixture_trajectory, fixture_analysis):
    with pytest.raises(AnalysisError, match=r"frac_explained.*mechgrok\.neuron_clusters"):
        fig_neuron_clusters(clusters.drop_vars("frac_explained"))
    with pytest.raises(AnalysisError, match=r"gini_W_E_component.*mechgrok\.progress_measures"):
        fig_progress_measures(progress.drop_vars("gini_W_E_component"))
    with pytest.raises(AnalysisError, match=r"W_E_fourier_norm, W_logit_fourier_norm.*fourier_norms"):
        fig_fourier_norms(fixture_trajectory)
    with pytest.raises(AnalysisError, match=r"attn_to_a.*'reference'"):
        fig_attention(fixture_analysis["attention"].to_dataset())
    with pytest.raises(AnalysisError, match=r"loss_train, loss_test.*mechgrok\.open_run.*loss_train"):
        fig_loss_curves(clusters)
    with pytest.raises(AnalysisError, match=r"over training"):
        fig_fourier_norms_over_training(progress.isel(checkpoint=-1))
    with pytest.raises(AnalysisError, match=r"got DataArray"):
        fig_neuron_activations(fixture_analysis["reference"]["neuron_acts"])
    # a tree group lacking a variable is named too (an older analysis.zarr)
    d = fixture_analysis.to_dict()
    d["/reference"] = d["/reference"].drop_vars("neuron_acts")
    with pytest.raises(AnalysisError, match=r"neuron_acts.*tree's 'reference' group"):
        fig_neuron_activations(xr.DataTree.from_dict(d))


def test_group_is_the_one_rule(fixture_analysis):
    fn = fixture_analysis["fourier_norms"].to_dataset()
    assert group(fn, "fourier_norms", needs=["W_E_fourier_norm"], figure="x") is fn
    from_tree = group(fixture_analysis, "fourier_norms", needs=["W_E_fourier_norm"], figure="x")
    xr.testing.assert_identical(from_tree, fn)
    with pytest.raises(AnalysisError, match="'llc' analysis, which the analysis tree lacks"):
        group(fixture_analysis, "llc", needs=["llc_mean"], figure="x")


# ---------------------------------------------------------------------------------------------------------------
# Loss curves: from the trajectory, each curve over its own logged epochs

N_EPOCHS, STRIDE = 301, 10
TRAIN = [1.0 / (e + 1) + 0.25 for e in range(N_EPOCHS)]
TEST = [2.0 / (STRIDE * j + 1) + 0.5 for j in range((N_EPOCHS - 1) // STRIDE + 1)]  # epochs 0, 10, ..., 300


def _paper_run(tmp_path):
    """A file in the layout of the authors' ``wd_10-1_mod_addition_loss_curve.pth``: one train loss per epoch,
    one test loss every 10 epochs (docs/store.md "Curves")."""
    model = paper_state_dict()
    f = tmp_path / "loss_curve.pth"
    torch.save({"model": model, "epoch": N_EPOCHS - 1, "config": {"p": 7, "seed": 1, "frac_train": 0.3},
                "train_losses": TRAIN, "test_losses": TEST}, f)
    return f


def test_loss_curves_draw_a_test_loss_logged_every_10_epochs(tmp_path, fixture_analysis):
    ds = mechgrok.open_run(_paper_run(tmp_path))
    assert ds["loss_test"].attrs["log_every"] == STRIDE and np.isnan(ds["loss_test"].values).sum() > 0
    for fig in (fig_loss_curves(ds), fig_loss_curves(fixture_analysis, trajectory=ds)):
        lines = _lines(fig.axes[0])
        test = lines["test"]
        np.testing.assert_array_equal(test.get_xdata(), np.arange(0, N_EPOCHS, STRIDE))
        np.testing.assert_array_equal(test.get_ydata(), TEST)
        np.testing.assert_array_equal(lines["train"].get_xdata(), np.arange(N_EPOCHS))
        np.testing.assert_array_equal(lines["train"].get_ydata(), TRAIN)
        assert "test every 10 epochs" in fig.get_suptitle() and "train every epoch" in fig.get_suptitle()
        assert fig.axes[0].get_xlim() == (0.0, N_EPOCHS - 1.0)


def test_loss_curves_from_the_run_and_from_the_progress_measures(fixture_trajectory, progress):
    fig = fig_loss_curves(fixture_trajectory)
    lines = _lines(fig.axes[0])
    for label, var in (("train", "loss_train"), ("test", "loss_test")):
        curve = fixture_trajectory[var].dropna("epoch")
        np.testing.assert_array_equal(lines[label].get_xdata(), curve["epoch"].values)
        np.testing.assert_array_equal(lines[label].get_ydata(), curve.values)
    acc = _lines(fig.axes[1])
    np.testing.assert_array_equal(acc["test"].get_ydata(), fixture_trajectory["acc_test"].dropna("epoch").values)
    assert "(every epoch;" in fig.get_suptitle()
    fig = fig_loss_curves(progress)
    lines = _lines(fig.axes[0])
    np.testing.assert_array_equal(lines["test"].get_xdata(), progress["checkpoint"].values)
    np.testing.assert_array_equal(lines["test"].get_ydata(), progress["loss_test"].values)
    assert "at the checkpoints" in fig.get_suptitle()
