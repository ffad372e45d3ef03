"""The distortion families of the mini set (robustsim.data.distortions): uint8 images of the input's shape,
reproducible from the generator, and a larger strength a larger change."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data as skd

from robustsim.data.distortions import FAMILIES

IMAGES = [skd.astronaut()[100:164, 100:164], skd.coffee()[50:114, 200:264]]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_family_is_reproducible_and_grows_with_its_strength(name):
    f = FAMILIES[name]
    for seed in range(6):
        for img in IMAGES:
            weak, strong = f(img, 0.1, np.random.default_rng(seed)), f(img, 0.9, np.random.default_rng(seed))
            assert weak.dtype == np.uint8 and weak.shape == img.shape and strong.shape == img.shape
            assert np.array_equal(weak, f(img, 0.1, np.random.default_rng(seed)))
            change = [np.abs(a.astype(np.float64) - img).mean() for a in (weak, strong)]
            assert change[1] > 1.5 * change[0] > 0
