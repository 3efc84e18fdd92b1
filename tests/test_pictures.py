"""Pictures of 2-D samples: beside the held-out data only when there are held-out data to show
(``toolkit sample`` of a 2-D run once drew the samples twice, one panel titled "data")."""

from __future__ import annotations

import numpy as np

from toolkit.evaluation import samples_picture


def test_two_dimensional_samples_get_one_panel_without_a_reference_and_two_with_one():
    rng = np.random.default_rng(0)
    samples, held_out = rng.standard_normal((200, 2)), 3 + rng.standard_normal((200, 2))
    alone = samples_picture(samples, None, "samples")
    beside = samples_picture(samples, None, "samples", reference=held_out)
    assert alone.shape[0] == beside.shape[0] and beside.shape[1] == 2 * alone.shape[1]
