"""Training on an ImageNet-style image folder, decoded per batch (cnnjax/data/inputs.py)."""

import json
import os

import numpy as np
import PIL.Image
import pytest

from cnnjax import UserError, load_config, train_and_evaluate
from tests.conftest import ROOT

RECIPE = os.path.join(ROOT, "configs", "resnet50_imagenet.py")


def _folder(root, counts: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for split, per_class in counts.items():
        for label, colour in (("cat", 0), ("dog", 2)):
            os.makedirs(root / split / label)
            for index in range(per_class):
                pixels = rng.integers(0, 80, (40 + index, 48, 3), dtype=np.uint8)
                pixels[..., colour] += 150  # the class is the dominant colour channel
                suffix = "png" if index % 2 else "jpg"
                PIL.Image.fromarray(pixels).save(root / split / label / f"{index}.{suffix}")


def test_resnet_trains_and_evaluates_on_an_image_folder(tmp_path):
    _folder(tmp_path / "images", {"train": 8, "val": 3}, seed=0)
    workdir = tmp_path / "run"
    config = load_config(
        f"{RECIPE}:dataset=imagefolder,smoke",
        {
            "data.image_folder": str(tmp_path / "images"),
            # The input is under test, not the net: ResNet-20 compiles faster than ResNet-18
            # (this test took 14.5 s of CPU instead of 18.4 on 2 cores); the ImageNet ResNets
            # train in tests/test_families.py.
            "model.name": "resnet20",
            "train.steps": 4,
            # 32x32 crops, not the smoke variant's 64x64: the same decoding and resizing of
            # every image, a quarter of the convolutions.
            "data.image_size": 32,
        },
    )
    outcome = train_and_evaluate(config, str(workdir))
    results = json.load(open(workdir / "results.json"))
    assert results == outcome.results
    assert (results["steps"], results["model"], results["dataset"]) == (
        4,
        "resnet20",
        "imagefolder",
    )
    assert results["epochs"] == 2.0  # 16 training images, batch 8
    assert 0.0 <= results["test_accuracy"] <= 1.0 and np.isfinite(results["test_loss"])
    # Every validation image is counted once: accuracy is a multiple of 1/6.
    assert abs(results["test_accuracy"] * 6 - round(results["test_accuracy"] * 6)) < 1e-6


def test_missing_image_folder_is_one_line(tmp_path):
    config = load_config(f"{RECIPE}:dataset=imagefolder,smoke")
    with pytest.raises(UserError) as error:
        train_and_evaluate(config, str(tmp_path / "run"))
    message = str(error.value)
    assert message.startswith("data.name=imagefolder needs config.data.image_folder=DIR")
    assert "\n" not in message
