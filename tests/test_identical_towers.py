"""Chapter 4 when the selected alpha is 0: the patched tower equals the zero-shot one, so every paired
cosine is 1 up to rounding."""

import numpy as np
from matplotlib.figure import Figure

from mtmg.book import figures


def test_cosine_histogram_of_values_equal_up_to_rounding():
    values = 1.0 + np.array([-2.2e-16, 0.0, 4.4e-16] * 20)
    assert isinstance(figures.cosine_histogram(values), Figure)
