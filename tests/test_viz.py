"""Book figures (sgwsss.book.viz) that draw operator outputs: the panels must show exactly those outputs."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from sgwsss.book import viz
from sgwsss.refine.otsu import otsu_threshold
from sgwsss.refine.self_guided import self_guided_refine


def _panel_data(ax):
    return np.asarray(ax.get_images()[-1].get_array())


def test_transition_row_shows_the_chosen_rows():
    g = 5
    rng = np.random.default_rng(0)
    T = torch.from_numpy(rng.random((1, g * g, g * g))).float()
    M = torch.from_numpy(rng.random((1, g * g, g * g))).float()
    image = torch.rand(1, 3, 40, 50)
    fig = viz.show_transition_row(image, T, M, row=1, col=3)
    p = 1 * g + 3
    np.testing.assert_array_equal(_panel_data(fig.axes[1]), T[0, p].reshape(g, g).numpy())
    np.testing.assert_array_equal(_panel_data(fig.axes[2]), M[0, p].reshape(g, g).numpy())
    with pytest.raises(ValueError, match="row and col"):
        viz.show_transition_row(image, T, M, row=g, col=0)
    with pytest.raises(ValueError, match="square grid"):
        viz.show_transition_row(image, T[:, :24, :24], M, row=0, col=0)


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_refinement_panels_are_the_binarised_map_and_the_refinement(threshold):
    torch.manual_seed(0)
    image = torch.rand(1, 3, 30, 40)
    maps = torch.zeros(1, 20, 30, 40)
    yy, xx = torch.meshgrid(torch.arange(30.0), torch.arange(40.0), indexing="ij")
    maps[0, 7] = torch.exp(-((yy - 15) ** 2 + (xx - 20) ** 2) / 60)  # class 8 = cat
    labels = torch.zeros(1, 20)
    labels[0, 7] = 1
    fig = viz.show_refinement(image, maps, labels, radius=4, eps=1e-3, iterations=2, threshold=threshold)
    a = maps[:, 7:8]
    t = otsu_threshold(a)[0, 0] if threshold is None else threshold
    np.testing.assert_array_equal(_panel_data(fig.axes[2]), (a[0, 0] > t).float().numpy())
    want = self_guided_refine(image, maps, iterations=2, radius=4, eps=1e-3, labels=labels, threshold=threshold)[0, 7]
    np.testing.assert_allclose(_panel_data(fig.axes[3]), want.numpy(), atol=1e-6)
    assert fig.axes[1].get_title() == "A (cat)"


def test_plot_metrics_draws_each_step_and_survives_a_cut_log(tmp_path):
    """One panel per (round, step) with that step's losses; a last line cut by a kill is skipped."""
    import json

    recs = [{"phase": "step1", "step": 1, "round": 1, "iteration": i, "loss": 1.0 / i, "cls": 0.5 / i, "aff": 0.5 / i}
            for i in (10, 20, 30)]
    recs.append({"phase": "pseudo", "round": 1, "iteration": 0, "seconds": 3.0})
    recs += [{"phase": "step2", "step": 2, "round": 1, "iteration": i, "loss": 2.0 / i, "seg": 2.0 / i} for i in (10, 20)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"phase": "step2", "round": 1, "iter')
    fig = viz.plot_metrics(path)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["round 1, step 1: L_cls + λ L_aff", "round 1, step 2: L_seg"]
    lines1 = {ln.get_label(): ln for ln in axes[0].get_lines()}
    assert sorted(lines1) == ["aff", "cls", "total"]
    np.testing.assert_allclose(lines1["total"].get_xydata(), [[10, 0.1], [20, 0.05], [30, 1 / 30]])
    lines2 = {ln.get_label(): ln for ln in axes[1].get_lines()}
    assert sorted(lines2) == ["seg", "total"]
    np.testing.assert_allclose(lines2["seg"].get_xydata(), [[10, 0.2], [20, 0.1]])
    assert lines1["total"].get_marker() == "o"  # three points: drawn with markers, or one point would not show
    with pytest.raises(FileNotFoundError, match="no metrics log"):
        viz.plot_metrics(tmp_path / "missing.jsonl")


def test_overlay_labels_blends_the_palette_over_the_image():
    """Class pixels: image and VOC colour blended; background: the image dimmed; 255: towards white; outlines white."""
    from sgwsss.data import PALETTE

    image = np.full((6, 8, 3), 100, np.uint8)
    lab = np.zeros((6, 8), np.int64)
    lab[1:5, 1:4] = 8  # cat, the darkest palette colour among the common classes
    lab[1:5, 5:7] = 255
    out = viz.overlay_labels(image, lab, alpha=0.6, outline=False).astype(int)
    np.testing.assert_array_equal(out[0, 0], [85, 85, 85])
    np.testing.assert_array_equal(out[2, 2], np.round(0.4 * 100 + 0.6 * PALETTE[8]).astype(int))
    np.testing.assert_array_equal(out[2, 5], [178, 178, 178])
    edged = viz.overlay_labels(image, lab, alpha=0.6)
    np.testing.assert_array_equal(edged[1, 1], [255, 255, 255])  # a region's boundary pixel
    np.testing.assert_array_equal(edged[2, 2], out[2, 2])  # its interior is unchanged
    with pytest.raises(ValueError, match="image's size"):
        viz.overlay_labels(image, lab[:5])


def test_book_style_is_applied_and_figures_fit_the_page():
    """The book's rcParams are set by the first figure, and a many-class map figure stays within MAX_WIDTH."""
    import matplotlib

    maps = torch.rand(20, 12, 16)
    labels = torch.zeros(20)
    labels[:6] = 1
    fig = viz.show_maps(torch.rand(3, 12, 16), maps, labels)
    assert matplotlib.rcParams["font.size"] == viz.BOOK_STYLE["font.size"]
    assert fig.get_size_inches()[0] <= viz.MAX_WIDTH


def test_frame_slider_embeds_png_and_jpeg_frames_with_their_mime_type():
    import matplotlib.pyplot as plt

    png = viz.figure_to_png(plt.figure(figsize=(1, 1)))
    jpeg = viz.figure_to_jpeg(plt.figure(figsize=(1, 1)))
    html = viz.frame_slider([png, jpeg], ["a", "b"]).data
    assert html.count("data:image/png;base64,") == 1 and html.count("data:image/jpeg;base64,") == 1
    with pytest.raises(ValueError, match="PNG or JPEG"):
        viz.frame_slider([b"GIF89a"], ["c"])


def test_docstring_section_turns_rst_into_markdown():
    from sgwsss.book import docstring_section

    def f():
        """Intro line.

        Settings that differ:

            * ``a=1``: see :meth:`pkg.mod.fn` and :class:`~pkg.Cls`.
            * ``b`` too.
        ``gpu`` follows.
        """

    text = docstring_section(f, "Settings that differ", "``gpu``")
    assert text == "Settings that differ:\n\n* `a=1`: see `pkg.mod.fn` and `pkg.Cls`.\n* `b` too."
    assert docstring_section(f, "Intro").startswith("Intro line.")
    with pytest.raises(ValueError, match="'missing'"):
        docstring_section(f, "missing")
    with pytest.raises(ValueError, match="does not follow"):
        docstring_section(f, "Settings", "nowhere")
