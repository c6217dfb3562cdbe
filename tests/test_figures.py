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
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from mechgrok.errors import AnalysisError
from mechgrok.figures import (
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
from mechgrok.figures.pack import ANIMATIONS, FIGURES, pack_files
from mechgrok.figures.style import new_figure, paper_style, stagger_tick_labels

FRAMES = 6  # frames per GIF in the tests (the pack's default is 40)

FIGURE_FUNCTIONS = [fig_progress_measures, fig_fourier_norms, fig_fourier_norms_over_training, fig_neuron_clusters,
                    fig_W_logit_per_cluster, fig_fourier_spectra_2d, fig_neuron_activations, fig_attention,
                    fig_key_frequency_ablations]


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
    names = pack_files()
    assert len(names) == 1 + 2 * len(FIGURES) + len(ANIMATIONS)
    assert sorted(p.name for p in pack.iterdir()) == sorted(names)
    for name in names:
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
    files = {p.name for p in pack.iterdir()} - {"index.html"}
    assert local == files
    assert all((pack / r).is_file() for r in local)
    assert parser.captions == len(FIGURES) + len(ANIMATIONS)
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
    np.testing.assert_array_equal(lines["train"].get_ydata(), fixture_trajectory["train_loss"].values)
    np.testing.assert_array_equal(lines["test"].get_xdata(), fixture_trajectory["epoch"].values)
    ph = fixture_analysis["phases"].to_dataset()
    epoch = {str(p): int(e) for p, e in zip(ph["point"].values, ph["epoch_at"].values)}
    expected = [(epoch["start"], epoch["memorisation_end"]), (epoch["memorisation_end"], epoch["circuit_formation_end"]),
                (epoch["circuit_formation_end"], epoch["cleanup_end"])]
    spans = sorted((p.get_x(), p.get_x() + p.get_width()) for p in ax.patches)
    np.testing.assert_allclose(spans, expected)
    # without the trajectory: the analysis losses at the checkpoints
    lines = {ln.get_label(): ln for ln in fig_loss_curves(fixture_analysis).axes[0].get_lines()}
    np.testing.assert_array_equal(lines["test"].get_xdata(), fixture_analysis["ablation"]["checkpoint"].values)


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
    with pytest.raises(AnalysisError, match="DataTree"):
        fig_fourier_norms(fixture_analysis["fourier_norms"].to_dataset())
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
# The command line

runner = CliRunner()


def test_cli_figures_from_an_analysis_store(fixture_analysis, tmp_path):
    from mechgrok.pipeline import write_analysis

    store = write_analysis(fixture_analysis, tmp_path / "analysis.zarr")
    res = runner.invoke(app, ["figures", str(store), "--no-animations", "--dpi", "50"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "figures"  # default: beside the store
    assert (out / "index.html").is_file() and (out / "10_key_frequency_ablations.png").is_file()
    assert not list(out.glob("*.gif"))
    assert "wrote 10 figures" in res.output


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
