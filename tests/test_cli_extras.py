"""What a newcomer meets first: ``--version``, the last lines of ``train``, readable degree plots."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import brainsparse
from brainsparse import topology
from brainsparse.cli import main
from brainsparse.report.topology import degree_distribution_figure


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"brainsparse {brainsparse.__version__}"


def test_version_flag_of_the_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "brainsparse", "--version"], capture_output=True, text=True,
                          check=True)
    assert done.stdout.startswith("brainsparse ")


def test_train_ends_with_the_run_folder_and_how_to_look_at_it(tmp_path, mnist_dir, capsys):
    out = tmp_path / "my run"
    code = main(["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--method", "set", "--density", "0.1",
                 "--epochs", "1", "--hidden", "32", "--train-subset", "256", "--no-progress", "--threads", "1",
                 "--out", str(out)])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-2:]
    assert last[0] == f"run folder: {out}"
    assert last[1] == f"look at it: brainsparse analyze '{out}'"
    assert main(["analyze", str(out)]) == 0  # the printed command works
    assert (out / "analysis" / "degree_distributions.png").is_file()


def _overlaps(boxes) -> bool:
    boxes = sorted(boxes, key=lambda b: b.x0)
    return any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))


@pytest.mark.parametrize(
    "shapes, density",
    [
        ([(1568, 784), (1568, 1568)], 0.01),  # degrees 2..30: matplotlib labelled 2×10⁰, 3×10⁰, ... on top of each other
        ([(64, 32), (32, 32)], 0.5),  # less than a decade
        ([(2000, 2000)], 0.3),  # one narrow, high range
        ([(30, 3000)], 0.05),  # several decades
    ],
)
def test_degree_plot_tick_labels_do_not_overlap(shapes, density):
    g = torch.Generator().manual_seed(0)
    masks = {f"layers.{i}": topology.bipartite_small_world(o, n, density, beta=0.25, generator=g)
             for i, (o, n) in enumerate(shapes)}
    fig = degree_distribution_figure(masks, title="t")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            for axis, coord in ((ax.xaxis, 0), (ax.yaxis, 1)):
                lo, hi = sorted(ax.get_xlim() if coord == 0 else ax.get_ylim())
                labels = [t for t in axis.get_ticklabels(which="both")
                          if t.get_visible() and t.get_text() and lo <= t.get_position()[coord] <= hi]
                assert len(labels) >= 2, [t.get_text() for t in labels]
                assert all("\\times" not in t.get_text() for t in labels)
                boxes = [t.get_window_extent(renderer) for t in labels]
                if coord == 1:  # stack vertically: compare along y
                    boxes = [type(b).from_extents(b.y0, b.x0, b.y1, b.x1) for b in boxes]
                assert not _overlaps(boxes), [t.get_text() for t in labels]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
