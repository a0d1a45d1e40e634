"""thresholds.png as Matplotlib objects: every panel has axis labels, and the titles
lie inside the figure for one, two and four panels side by side."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from n2uq_jax.inspect import figures


def _panel(index):
  samples = np.random.default_rng(index).normal(0.8, 0.5, size=500)
  return figures.ThresholdPanel(name=f'layer{index}.0.conv1', quantizer='n2uq', bits=2,
                                samples=samples, thresholds=np.array([0.3, 1.0, 1.8]),
                                initial_thresholds=np.array([1 / 3, 1.0, 5 / 3]))


@pytest.mark.parametrize('count', [1, 2, 4])
def test_threshold_panels_are_labelled_and_the_titles_fit(count):
  figure = figures.thresholds_figure([_panel(i) for i in range(count)])
  canvas = FigureCanvasAgg(figure)
  canvas.draw()  # runs the constrained layout
  renderer = canvas.get_renderer()
  inside = figure.bbox
  title = figure.get_suptitle()
  assert title.replace('\n', ' ') == figures.THRESHOLDS_TITLE
  box = figure._suptitle.get_window_extent(renderer)  # pylint: disable=protected-access
  assert inside.x0 <= box.x0 and box.x1 <= inside.x1, (box, inside)
  assert inside.y0 <= box.y0 and box.y1 <= inside.y1, (box, inside)
  assert len(figure.axes) == count
  for axes in figure.axes:
    assert axes.get_xlabel() == 'quantizer input' and axes.get_ylabel() == 'density'
    for text in (axes.title, axes.xaxis.label, axes.yaxis.label):
      box = text.get_window_extent(renderer)
      assert inside.x0 <= box.x0 and box.x1 <= inside.x1, (text.get_text(), box, inside)
