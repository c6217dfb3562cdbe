"""The figure pack (``mechgrok figures``): every file exists, decodes, is not blank, is linked from index.html;
the figures are labelled, cos and sin are labelled by component (not index), phases are shaded where found."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.collections import QuadMesh
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from PIL import Image
from typer.testing import CliRunner

from mechgrok_cli.main import app
from mechgrok.errors import AnalysisError
from mechgrok.figures import (
    fig_algorithm_metrics,
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
    write_figure_pack,
)
from mechgrok.figures.animations import frame_indices
from mechgrok.figures.fourier_norms import cos_sin_norms
from mechgrok.figures.pack import pack_files
from mechgrok.figures.style import new_figure, paper_style, stagger_tick_labels

FRAMES = 6  # frames per GIF in the tests (the pack's default is 40)

#: Every file of a complete pack, written out by hand (docs/figures.md): not derived from the pack's own tables.
PACK_FILES = [
    "index.html",
    "01_loss_curves.png", "01_loss_curves.svg",
    "02_progress_measures.png", "02_progress_measures.svg",
    "03_fourier_norms.png", "03_fourier_norms.svg",
    "04_fourier_norms_over_training.png", "04_fourier_norms_over_training.svg",
    "05_neuron_clusters.png", "05_neuron_clusters.svg",
    "06_W_logit_per_cluster.png", "06_W_logit_per_cluster.svg",
    "07_fourier_spectra_2d.png", "07_fourier_spectra_2d.svg",
    "08_neuron_activations.png", "08_neuron_activations.svg",
    "09_attention.png", "09_attention.svg",
    "10_key_frequency_ablations.png", "10_key_frequency_ablations.svg",
    "11_W_E_fourier_norms.gif",
    "12_neuron_frequencies.gif",
    "13_clock_vs_pizza.png", "13_clock_vs_pizza.svg",
    "14_vector_competition.png", "14_vector_competition.svg",
    "15_slingshots.png", "15_slingshots.svg",
]
N_CAPTIONS = 15  # one per figure (13) and per animation (2)

FIGURE_FUNCTIONS = [fig_progress_measures, fig_fourier_norms, fig_fourier_norms_over_training, fig_neuron_clusters,
                    fig_W_logit_per_cluster, fig_fourier_spectra_2d, fig_neuron_activations, fig_attention,
                    fig_key_frequency_ablations, fig_algorithm_metrics]


@pytest.fixture(scope="session")
def pack(fixture_analysis, fixture_trajectory, tmp_path_factory) -> Path:
    """The pack of the committed run, written once (small GIFs and PNGs to stay fast)."""
    out = tmp_path_factory.mktemp("pack") / "figures"
    index = write_figure_pack(fixture_analysis, out, trajectory=fixture_trajectory, max_frames=FRAMES, dpi=90,
                              gif_dpi=50)
    assert index == out / "index.html"
    return out


def _non_blank(img: Image.Image) -> tuple[float, float]:
    """(pixel standard deviation, share of pixels that are not near-white)."""
    a = np.asarray(img.convert("L"), dtype=np.float64)
    return float(a.std()), float((a < 235).mean())


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.captions = 0

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        for key in ("src", "href"):
            if key in d and not d[key].startswith("#"):
                self.refs.append(d[key])
        if tag == "figcaption":
            self.captions += 1


# ---------------------------------------------------------------------------------------------------------------
# The pack


def test_every_file_of_the_pack_exists_decodes_and_is_not_blank(pack):
    assert sorted(p.name for p in pack.iterdir()) == sorted(PACK_FILES)
    assert sorted(pack_files()) == sorted(PACK_FILES)
    for name in PACK_FILES:
        path = pack / name
        assert path.stat().st_size > 1000, name
        if name.endswith(".png"):
            with Image.open(path) as im:
                im.verify()
            with Image.open(path) as im:
                assert im.format == "PNG"
                assert 3.0 * 90 <= im.size[0] <= 7.0 * 90 + 1  # at most a page's 7 in, at the dpi asked for
                std, ink = _non_blank(im)
            assert std > 20 and ink > 0.02, f"{name} looks blank (std {std:.1f}, ink {ink:.3f})"
        elif name.endswith(".svg"):
            root = ET.parse(path).getroot()
            assert root.tag.endswith("svg"), name
            paths = [el for el in root.iter() if el.tag.endswith("path") or el.tag.endswith("use")]
            assert len(paths) > 50, f"{name} has only {len(paths)} drawn elements"
        elif name.endswith(".gif"):
            with Image.open(path) as im:
                assert im.format == "GIF"
                assert 2 <= im.n_frames <= FRAMES, (name, im.n_frames)
                im.seek(0)
                first = np.asarray(im.convert("RGB"), dtype=np.int16)
                std, ink = _non_blank(im)
                assert std > 20 and ink > 0.02, name
                im.seek(im.n_frames - 1)
                last = np.asarray(im.convert("RGB"), dtype=np.int16)
            assert np.abs(first - last).mean() > 0.5, f"{name}: first and last frames are the same"


def test_index_html_references_every_file_and_captions_each(pack):
    parser = _Links()
    parser.feed((pack / "index.html").read_text(encoding="utf-8"))
    local = {r for r in parser.refs if "://" not in r}
    assert local == set(PACK_FILES) - {"index.html"}
    assert all((pack / r).is_file() for r in local)
    assert parser.captions == N_CAPTIONS
    text = (pack / "index.html").read_text(encoding="utf-8")
    assert "key frequencies: 9, 17, 25" in text  # the run's summary line
    assert "Left out" not in text


def test_pack_leaves_out_what_the_tree_lacks_and_removes_stale_files(fixture_analysis, pack, tmp_path):
    out = tmp_path / "figures"
    shutil.copytree(pack, out)
    (out / "notes.txt").write_text("mine")
    keep = {k: v for k, v in fixture_analysis.to_dict().items() if k not in ("/reference", "/neurons", "/phases")}
    tree = xr.DataTree.from_dict(keep)
    write_figure_pack(tree, out, max_frames=3, dpi=40, gif_dpi=30)
    names = {p.name for p in out.iterdir()}
    for gone in ("05_neuron_clusters.png", "06_W_logit_per_cluster.svg", "07_fourier_spectra_2d.png",
                 "08_neuron_activations.png", "09_attention.png", "12_neuron_frequencies.gif"):
        assert gone not in names
    assert {"02_progress_measures.png", "03_fourier_norms.svg", "11_W_E_fourier_norms.gif", "notes.txt"} <= names
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "Left out" in text and "09_attention" in text and "needs reference" in text
    assert "phases:" not in text  # no phases group: nothing claimed


def test_pack_refuses_what_is_not_an_analysis_tree(fixture_trajectory, tmp_path):
    with pytest.raises(AnalysisError, match="analysis tree"):
        write_figure_pack(fixture_trajectory, tmp_path / "f")
    assert not (tmp_path / "f").exists()


# ---------------------------------------------------------------------------------------------------------------
# The figure functions


@pytest.mark.parametrize("fn", FIGURE_FUNCTIONS, ids=lambda f: f.__name__)
def test_figure_functions_return_labelled_figures(fixture_analysis, fn):
    fig = fn(fixture_analysis)
    assert isinstance(fig, Figure)
    assert fig.get_suptitle() or any(ax.get_title() for ax in fig.axes)
    plotted = [ax for ax in fig.axes if ax.get_visible() and ax.axison and ax.get_label() != "<colorbar>"]
    assert plotted
    columns: dict[float, list[str]] = {}  # axes sharing a column may label x only on the bottom one
    for ax in plotted:
        columns.setdefault(round(ax.get_position().x0, 2), []).append(ax.get_xlabel().strip())
    for x0, labels in columns.items():
        assert any(labels), f"{fn.__name__}: the column of axes at x = {x0} has no x label"
    assert any(ax.get_ylabel().strip() for ax in plotted), fn.__name__
    for ax in fig.axes:  # every colour bar says what it shows
        if ax.get_label() == "<colorbar>":
            assert ax.get_ylabel().strip() or ax.get_xlabel().strip(), f"{fn.__name__}: unlabelled colour bar"


def test_loss_curves_use_the_per_epoch_curves_and_shade_the_phases(fixture_analysis, fixture_trajectory):
    fig = fig_loss_curves(fixture_analysis, trajectory=fixture_trajectory)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "nats" in ax.get_ylabel()
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    np.testing.assert_array_equal(lines["train"].get_ydata(), fixture_trajectory["loss_train"].values)
    np.testing.assert_array_equal(lines["test"].get_ydata(), fixture_trajectory["loss_test"].values)
    np.testing.assert_array_equal(lines["test"].get_xdata(), fixture_trajectory["epoch"].values)
    acc = {ln.get_label(): ln for ln in fig.axes[1].get_lines()}
    np.testing.assert_array_equal(acc["train"].get_ydata(), fixture_trajectory["acc_train"].values)
    np.testing.assert_array_equal(acc["test"].get_ydata(), fixture_trajectory["acc_test"].values)
    ph = fixture_analysis["phases"].to_dataset()
    epoch = {str(p): int(e) for p, e in zip(ph["point"].values, ph["epoch_at"].values)}
    expected = [(epoch["start"], epoch["memorisation_end"]), (epoch["memorisation_end"], epoch["circuit_formation_end"]),
                (epoch["circuit_formation_end"], epoch["cleanup_end"])]
    spans = sorted((p.get_x(), p.get_x() + p.get_width()) for p in ax.patches)
    np.testing.assert_allclose(spans, expected)
    # without the trajectory: the analysis losses at the checkpoints
    lines = {ln.get_label(): ln for ln in fig_loss_curves(fixture_analysis).axes[0].get_lines()}
    np.testing.assert_array_equal(lines["test"].get_xdata(), fixture_analysis["ablation"]["checkpoint"].values)
    np.testing.assert_array_equal(lines["test"].get_ydata(), fixture_analysis["ablation"]["loss_test"].values)
    np.testing.assert_array_equal(lines["train"].get_ydata(), fixture_analysis["ablation"]["loss_train"].values)


def test_progress_measures_show_the_llc_when_present(fixture_analysis):
    d = fixture_analysis.to_dict()
    epochs = fixture_analysis["ablation"]["checkpoint"].values[::20]
    mean = np.linspace(10, 40, epochs.size)
    d["/llc"] = xr.Dataset({"llc_mean": ("checkpoint", mean), "llc_std": ("checkpoint", np.full(epochs.size, 2.0))},
                           coords={"checkpoint": epochs})
    fig = fig_progress_measures(xr.DataTree.from_dict(d))
    titles = [ax.get_title() for ax in fig.axes]
    assert "Local learning coefficient" in titles and "Accuracy" not in titles
    ax = fig.axes[titles.index("Local learning coefficient")]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "LLC (mean)"]
    np.testing.assert_allclose(line.get_ydata(), mean)


def _planted_norm_tree(p: int, values: dict[str, float], *, order: list[str]) -> xr.DataTree:
    """A tree whose W_E / W_logit component norms are ``values`` by label (0.1 elsewhere), coords in ``order``."""
    v = np.array([values.get(lab, 0.1) for lab in order])
    fn = xr.Dataset(
        {"W_E_fourier_norm": (("checkpoint", "fourier"), v[None]),
         "W_logit_fourier_norm": (("checkpoint", "fourier"), 2 * v[None])},
        coords={"checkpoint": [100], "fourier": order},
    )
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs={"p": p, "key_freqs": [2], "reference_checkpoint": 100}),
                                  "/fourier_norms": fn})


def _bars(ax, label: str) -> dict[float, float]:
    (cont,) = [c for c in ax.containers if isinstance(c, BarContainer) and c.get_label() == label]
    return {round(r.get_x() + r.get_width() / 2, 3): r.get_height() for r in cont}


@pytest.mark.parametrize("lineage", ["paper", "sin-first"])
def test_cos_and_sin_bars_follow_the_component_labels(lineage):
    p = 7
    order = ["const"]
    for k in range(1, 4):
        order += [f"cos {k}", f"sin {k}"] if lineage == "paper" else [f"sin {k}", f"cos {k}"]
    planted = {"const": 0.5, "cos 2": 5.0, "sin 3": 3.0}
    fig = fig_fourier_norms(_planted_norm_tree(p, planted, order=order))
    ax_e, ax_l = fig.axes[:2]
    cos, sin, const = _bars(ax_e, "cos k"), _bars(ax_e, "sin k"), _bars(ax_e, "const")
    assert cos == pytest.approx({0.8: 0.1, 1.8: 5.0, 2.8: 0.1})  # cos k drawn left of k
    assert sin == pytest.approx({1.2: 0.1, 2.2: 0.1, 3.2: 3.0})
    assert const == pytest.approx({0.0: 0.5})
    assert _bars(ax_l, "cos k")[1.8] == pytest.approx(10.0)
    # the same split as a plain loop over the labels
    da = xr.DataArray(np.arange(p, dtype=float), dims="fourier", coords={"fourier": order})
    c0, cs, sn = cos_sin_norms(da)
    assert c0 == order.index("const")
    assert list(cs) == [order.index(f"cos {k}") for k in (1, 2, 3)]
    assert list(sn) == [order.index(f"sin {k}") for k in (1, 2, 3)]


def test_missing_analysis_or_wrong_input_raises_a_mechgrok_error(fixture_analysis):
    d = {k: v for k, v in fixture_analysis.to_dict().items() if k != "/reference"}
    with pytest.raises(AnalysisError, match="'reference' analysis"):
        fig_attention(xr.DataTree.from_dict(d))
    with pytest.raises(AnalysisError, match="W_E_fourier_norm"):  # a plain Dataset lacking what the figure plots
        fig_fourier_norms(fixture_analysis["fourier_norms"].to_dataset().drop_vars("W_E_fourier_norm"))
    with pytest.raises(AnalysisError, match="'cos 2'"):
        cos_sin_norms(xr.DataArray(np.ones(5), dims="fourier", coords={"fourier": ["const", "cos 1", "sin 1", "x", "y"]}))


def test_svg_is_byte_for_byte_deterministic(fixture_analysis, tmp_path):
    for i in range(2):  # saved as the pack saves them: in the style (fixed hash salt), without a date
        with paper_style():
            fig_key_frequency_ablations(fixture_analysis).savefig(tmp_path / f"{i}.svg", metadata={"Date": None})
    assert (tmp_path / "0.svg").read_bytes() == (tmp_path / "1.svg").read_bytes()


def test_frame_indices():
    idx = frame_indices(61, 40)
    assert idx[0] == 0 and idx[-1] == 60 and len(idx) <= 40 and np.all(np.diff(idx) > 0)
    assert list(frame_indices(5, 40)) == [0, 1, 2, 3, 4]
    assert list(frame_indices(1, 40)) == [0]
    with pytest.raises(AnalysisError):
        frame_indices(10, 1)


def test_close_tick_labels_are_staggered():
    fig = new_figure(3.0, 2.0)
    ax = fig.subplots()
    ax.set_xlim(0, 56)
    ax.set_ylim(0, 56)
    assert stagger_tick_labels(ax, [14, 35, 41, 42, 52], ["14", "35", "41", "42", "52"], axis="x") == \
        ["14", "35", "41", "\n42", "52"]
    out = stagger_tick_labels(ax, [0, 1, 30], ["const", "1", "30"], axis="y")
    assert out[0] == "const" and out[1] != "1" and out[1].strip() == "1" and out[2] == "30"


# ---------------------------------------------------------------------------------------------------------------
# The plotted data: what each figure draws is the analysis' numbers (read back from the matplotlib artists and
# compared with the Dataset values they stand for, picked by coordinate label, not by the figure code's indexing)


def _group(tree: xr.DataTree, name: str) -> xr.Dataset:
    return tree[name].to_dataset(inherit=False)


def _labelled_lines(ax) -> dict[str, object]:
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def _axes_by_title(fig) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def _assert_lines(ax, want: dict[str, xr.DataArray], x: np.ndarray) -> None:
    lines = _labelled_lines(ax)
    assert set(lines) == set(want), (ax.get_title(), sorted(lines))
    for label, da in want.items():
        np.testing.assert_array_equal(lines[label].get_xdata(), x, err_msg=f"{ax.get_title()}: {label}")
        np.testing.assert_array_equal(np.asarray(lines[label].get_ydata(), dtype=np.float64),
                                      np.asarray(da.values, dtype=np.float64), err_msg=f"{ax.get_title()}: {label}")


def test_progress_measures_plot_the_ablation_and_weight_measures(fixture_analysis):
    ab, me = _group(fixture_analysis, "ablation"), _group(fixture_analysis, "measures")
    x = ab["checkpoint"].values
    np.testing.assert_array_equal(me["checkpoint"].values, x)
    axes = _axes_by_title(fig_progress_measures(fixture_analysis))
    expected = {
        "Excluded loss (train)": {"excluded loss": ab["excluded_loss_full"], "train loss": ab["loss_train"],
                                  "test loss": ab["loss_test"]},
        "Restricted loss (all pairs)": {"restricted loss": ab["restricted_loss_all"], "test loss": ab["loss_test"]},
        "Test and train loss": {"test loss": ab["loss_test"], "train loss": ab["loss_train"]},
        "Gini of Fourier norms": {"W_E": me["gini_W_E_component"], "W_logit": me["gini_W_logit_component"]},
        "Sum of squared weights": {"all parameters": me["sum_sq_weights_total"]},
        "Accuracy": {"train": ab["acc_train"], "test": ab["acc_test"], "restricted": ab["restricted_acc_all"]},
    }
    assert set(expected) <= set(axes)
    for title, want in expected.items():
        _assert_lines(axes[title], want, x)
    # the curves are not flat: a figure of constants would not show the phases
    assert ab["excluded_loss_full"].values.max() > 10 * ab["excluded_loss_full"].values.min()


def test_key_frequency_ablations_plot_each_key_frequency(fixture_analysis):
    ab = _group(fixture_analysis, "ablation")
    x = ab["checkpoint"].values
    fig = fig_key_frequency_ablations(fixture_analysis)
    ax, ax2 = fig.axes[:2]
    keys = [9, 17, 25]  # the fixture run's key frequencies
    freqs = ab["freq"].values
    non_key = ab["excluded_loss_by_freq"].values[:, ~np.isin(freqs, keys)]  # (checkpoint, freq)
    assert list(ab["excluded_loss_by_freq"].dims) == ["checkpoint", "freq"] and non_key.shape[1] == freqs.size - 3
    left = {f"k = {k} removed": ab["excluded_loss"].sel(key_freq=k) for k in keys}
    left["all key removed"] = ab["excluded_loss_full"]
    left["max over non-key k"] = xr.DataArray(non_key.max(axis=1))
    left["train loss"] = ab["loss_train"]
    _assert_lines(ax, left, x)
    right = {f"restricted, {s} pairs": ab[f"restricted_loss_{s}"] for s in ("all", "train", "test")}
    right["test loss"] = ab["loss_test"]
    _assert_lines(ax2, right, x)


def test_fourier_norm_bars_are_the_norms_at_the_reference_checkpoint(fixture_analysis):
    ref = int(fixture_analysis.attrs["reference_checkpoint"])
    assert ref == 3000
    fn = _group(fixture_analysis, "fourier_norms").sel(checkpoint=ref)
    n = (int(fixture_analysis.attrs["p"]) - 1) // 2
    fig = fig_fourier_norms(fixture_analysis)
    for ax, var in zip(fig.axes[:2], ("W_E_fourier_norm", "W_logit_fourier_norm")):
        at = fn[var]
        assert _bars(ax, "const") == pytest.approx({0.0: float(at.sel(fourier="const"))}, rel=1e-12)
        assert _bars(ax, "cos k") == pytest.approx(
            {round(k - 0.2, 3): float(at.sel(fourier=f"cos {k}")) for k in range(1, n + 1)}, rel=1e-12), var
        assert _bars(ax, "sin k") == pytest.approx(
            {round(k + 0.2, 3): float(at.sel(fourier=f"sin {k}")) for k in range(1, n + 1)}, rel=1e-12), var
    # the reference checkpoint differs from the first: a figure of the wrong checkpoint would not pass
    first = _group(fixture_analysis, "fourier_norms")["W_E_fourier_norm"].isel(checkpoint=0)
    assert not np.allclose(first.values, fn["W_E_fourier_norm"].values, rtol=1e-3)


def test_fourier_norms_over_training_maps_are_the_per_frequency_norms(fixture_analysis):
    fn = _group(fixture_analysis, "fourier_norms")
    epochs, freqs = fn["checkpoint"].values, fn["freq"].values
    fig = fig_fourier_norms_over_training(fixture_analysis)
    meshes = [(ax, c) for ax in fig.axes if ax.get_label() != "<colorbar>" for c in ax.collections
              if isinstance(c, QuadMesh)]
    assert [ax.get_title() for ax, _ in meshes] == ["W_E: norm per frequency", "W_logit: norm per frequency"]
    for (ax, mesh), var in zip(meshes, ("W_E_freq_norm", "W_logit_freq_norm")):
        want = fn[var].transpose("freq", "checkpoint").values
        got = np.asarray(mesh.get_array()).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=var)
        corners = mesh.get_coordinates()  # (freq + 1, checkpoint + 1, 2): cell edges
        np.testing.assert_allclose(corners[:, 0, 1], np.append(freqs - 0.5, freqs[-1] + 0.5))
        x_edges = corners[0, :, 0]
        assert np.all(x_edges[:-1] <= epochs) and np.all(epochs <= x_edges[1:]), var  # each cell holds its epoch


def test_neuron_clusters_plot_the_fve_the_cluster_sizes_and_their_history(fixture_analysis):
    ref, nz = _group(fixture_analysis, "reference"), _group(fixture_analysis, "neurons")
    fve = ref["frac_explained"].values.astype(np.float64)
    cluster = ref["cluster"].values.tolist()
    fig = fig_neuron_clusters(fixture_analysis)
    ax_hist, ax_sizes, ax_time = [ax for ax in fig.axes if ax.get_title()][:3]
    heights = [r.get_height() for r in ax_hist.patches]
    np.testing.assert_array_equal(heights, np.histogram(fve, bins=np.linspace(0, 1, 26))[0])
    (thr,) = [ln for ln in ax_hist.get_lines() if ln.get_label().startswith("threshold")]
    assert list(thr.get_xdata()) == [0.85, 0.85]
    # cluster sizes at the reference, counted here with a plain loop
    counts: dict[str, int] = {}
    for c in cluster:
        counts["none" if c == -1 else str(c)] = counts.get("none" if c == -1 else str(c), 0) + 1
    (bars,) = [c for c in ax_sizes.containers if isinstance(c, BarContainer)]
    shown = dict(zip([t.get_text() for t in ax_sizes.get_xticklabels()], [r.get_height() for r in bars]))
    assert shown == counts
    assert sum(counts.values()) == ref.sizes["d_mlp"] and {"9", "17", "25"} <= set(counts)
    # over training: the key clusters, the other clusters together, and the unexplained neurons
    sizes = nz["cluster_sizes"]
    cf = nz["cluster_freq"].values
    other = sizes.values[:, (cf != -1) & ~np.isin(cf, [9, 17, 25])].sum(axis=1)
    want = {f"k = {k}": sizes.sel(cluster_freq=k) for k in (9, 17, 25)}
    want["other k"] = xr.DataArray(other)
    want["unexplained"] = sizes.sel(cluster_freq=-1)
    _assert_lines(ax_time, want, nz["checkpoint"].values)


def test_W_logit_per_cluster_images_are_each_clusters_columns(fixture_analysis):
    ref = _group(fixture_analysis, "reference")
    W = ref["W_logit_fourier"].transpose("fourier", "d_mlp").values
    cluster = ref["cluster"].values
    fig = fig_W_logit_per_cluster(fixture_analysis)
    images = {ax.get_title(): ax.images[0] for ax in fig.axes if ax.images}
    assert set(images) == {"cluster k = 9", "cluster k = 17", "cluster k = 25"}
    for k in (9, 17, 25):
        members = [n for n in range(cluster.size) if cluster[n] == k]
        np.testing.assert_array_equal(np.asarray(images[f"cluster k = {k}"].get_array()), W[:, members], err_msg=k)


def test_neuron_activation_images_are_the_normalised_activations(fixture_analysis):
    ref = _group(fixture_analysis, "reference")
    acts = ref["neuron_acts"].transpose("example", "a", "b").values.astype(np.float64)
    neurons = ref["example_neuron"].values.tolist()
    fig = fig_neuron_activations(fixture_analysis)
    images = {ax.get_title(): ax.images[0] for ax in fig.axes if ax.images}
    assert set(images) == {f"neuron {n}" for n in neurons}
    for e, n in enumerate(neurons):
        a = acts[e]
        assert a.max() > 0
        np.testing.assert_allclose(np.asarray(images[f"neuron {n}"].get_array()), a / a.max(), rtol=1e-12,
                                   err_msg=f"neuron {n}")


def test_attention_figure_draws_each_heads_pattern_and_fit(fixture_analysis):
    ref, at = _group(fixture_analysis, "reference"), _group(fixture_analysis, "attention")
    epoch = int(fixture_analysis.attrs["reference_checkpoint"])
    fit = at.sel(checkpoint=epoch)
    heads = ref["attn_to_a"]["head"].values
    fig = fig_attention(fixture_analysis)
    top = [ax for ax in fig.axes if ax.images]
    assert len(top) == heads.size
    for h, ax in enumerate(top):
        want = ref["attn_to_a"].isel(head=h).transpose("a", "b").values
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), want, rtol=1e-12, err_msg=h)
        k, fve = int(fit["head_freq"].values[h]), float(fit["head_fve"].values[h])
        assert ax.get_title() == f"head {h}: k = {k}, FVE {fve:.2f}"
        assert k in (9, 17, 25)
    # the bottom row: |W_attn| per Fourier component of each head
    bottom = [ax for ax in fig.axes if any(isinstance(c, BarContainer) for c in ax.containers)]
    assert len(bottom) == heads.size
    n = (int(fixture_analysis.attrs["p"]) - 1) // 2
    for h, ax in enumerate(bottom):
        W = np.abs(ref["W_attn_fourier"].isel(head=h))
        assert _bars(ax, "cos k") == pytest.approx(
            {round(k - 0.2, 3): float(W.sel(fourier=f"cos {k}")) for k in range(1, n + 1)}, rel=1e-12), h
        assert _bars(ax, "sin k") == pytest.approx(
            {round(k + 0.2, 3): float(W.sel(fourier=f"sin {k}")) for k in range(1, n + 1)}, rel=1e-12), h


def test_fourier_spectra_images_are_the_stored_spectra(fixture_analysis):
    ref = _group(fixture_analysis, "reference")
    fig = fig_fourier_spectra_2d(fixture_analysis)
    images = {ax.get_title(): ax.images[0] for ax in fig.axes if ax.images}
    np.testing.assert_allclose(np.asarray(images["logits: norm over c"].get_array()),
                               ref["logits_fourier_norm"].transpose("fa", "fb").values, rtol=1e-12)
    neurons, freqs = ref["example_neuron"].values.tolist(), ref["example_freq"].values.tolist()
    first = {}  # the first example of each cluster is drawn
    for e, (n, k) in enumerate(zip(neurons, freqs)):
        first.setdefault(k, (e, n))
    assert set(images) == {"logits: norm over c"} | {f"neuron {n} (cluster {k})" for k, (e, n) in first.items()}
    for k, (e, n) in first.items():
        want = ref["neuron_fourier"].isel(example=e).transpose("fa", "fb").values
        np.testing.assert_allclose(np.asarray(images[f"neuron {n} (cluster {k})"].get_array()), want, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# The command line

runner = CliRunner()


def test_cli_figures_from_an_analysis_store(fixture_analysis, tmp_path):
    from mechgrok.store.analysis_store import write_analysis

    store = write_analysis(fixture_analysis, tmp_path / "analysis.zarr")
    res = runner.invoke(app, ["figures", str(store), "--no-animations", "--dpi", "50"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "figures"  # default: beside the store
    assert (out / "index.html").is_file() and (out / "10_key_frequency_ablations.png").is_file()
    assert not list(out.glob("*.gif"))
    n_figures = len(list(out.glob("*.png")))
    assert n_figures >= 10 and f"wrote {n_figures} figures" in res.output


def test_cli_figures_missing_path_is_one_red_line(tmp_path):
    res = runner.invoke(app, ["figures", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "no such file" in res.output and "Traceback" not in res.output


def test_cli_analyze_with_figures_passes_the_run_for_the_loss_curves(fixture_run, tmp_path):
    # a cheap analysis (weights only, no ablation group): the loss curves can only come from the run passed on
    # by `analyze`, so 01 exists only if it was; the rest needing other analyses is listed as left out
    res = runner.invoke(app, ["analyze", str(fixture_run), "--out", str(tmp_path), "--only", "fourier_norms",
                              "--figures", "--quiet"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "figures"
    names = {p.name for p in out.iterdir()}
    assert {"01_loss_curves.png", "03_fourier_norms.svg", "04_fourier_norms_over_training.png",
            "11_W_E_fourier_norms.gif", "index.html"} <= names
    assert "09_attention.png" not in names
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "Left out" in text and "02_progress_measures" in text
