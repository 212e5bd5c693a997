"""Intensity scaling by what an image is (issue: the paper's metrics exactly): 8-bit by 0..255, others per setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fedkper_monai.data import build_transforms
from fedkper_monai.data.intensity import ScaleToUnitRanged


@pytest.fixture
def images(tmp_path):
    dark = np.full((28, 28), 50, np.uint8)
    dark[0, 0] = 100
    paths = {"gray8": tmp_path / "gray8.png", "rgb8": tmp_path / "rgb8.png", "gray16": tmp_path / "gray16.png"}
    Image.fromarray(dark).save(paths["gray8"])
    Image.fromarray(np.stack([dark] * 3, axis=-1)).save(paths["rgb8"])
    Image.fromarray(dark.astype(np.uint16) * 200).save(paths["gray16"])
    return paths


def _scaled(path, **overrides) -> torch.Tensor:
    pipeline = build_transforms("classification_2d", image_size=[28, 28], overrides=overrides or None)
    return torch.as_tensor(pipeline({"image": str(path), "label": 0, "id": "x"})["image"])


def test_8_bit_images_share_the_window_0_to_255_by_default(images):
    # A dark image stays dark: 50 -> 50 / 127.5 - 1, not stretched to [-1, 1] by its own min and max.
    for name in ("gray8", "rgb8"):
        image = _scaled(images[name])
        assert float(image.min()) == pytest.approx(50 / 127.5 - 1, abs=1e-6), name
        assert float(image.max()) == pytest.approx(100 / 127.5 - 1, abs=1e-6), name
    assert torch.allclose(_scaled(images["rgb8"], channels=1), _scaled(images["gray8"]), atol=1e-6)


def test_other_images_and_per_image_mode_use_their_own_range(images):
    sixteen_bit = _scaled(images["gray16"])
    assert (float(sixteen_bit.min()), float(sixteen_bit.max())) == (-1.0, 1.0)
    per_image = _scaled(images["gray8"], intensity_range="per_image")
    assert (float(per_image.min()), float(per_image.max())) == (-1.0, 1.0)


def test_a_fixed_window_clips():
    scale = ScaleToUnitRanged("image", intensity_range=[-1000, 1000])
    out = scale({"image": torch.tensor([[-2000.0, 0.0, 500.0, 3000.0]])})["image"]
    assert torch.allclose(torch.as_tensor(out), torch.tensor([[-1.0, 0.0, 0.5, 1.0]]))


@pytest.mark.parametrize("bad", ["auto8", [5, 5], [1, "x"], 3])
def test_a_bad_setting_is_refused(bad):
    with pytest.raises(ValueError, match="intensity_range"):
        ScaleToUnitRanged("image", intensity_range=bad)
