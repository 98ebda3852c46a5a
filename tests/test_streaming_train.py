"""`cnnjax train` on an ImageNet-style image folder, decoded per batch (cnnjax/data/inputs.py)."""

import json
import os

import numpy as np
import PIL.Image

from tests.conftest import ROOT, run_cnnjax

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
    result = run_cnnjax(
        "train",
        f"--config={RECIPE}:dataset=imagefolder,smoke",
        f"--config.data.image_folder={tmp_path / 'images'}",
        f"--workdir={workdir}",
        "--config.model.name=resnet18",
        "--config.train.steps=4",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.load(open(workdir / "results.json"))
    assert (results["steps"], results["model"], results["dataset"]) == (
        4,
        "resnet18",
        "imagefolder",
    )
    assert results["epochs"] == 2.0  # 16 training images, batch 8
    assert 0.0 <= results["test_accuracy"] <= 1.0 and np.isfinite(results["test_loss"])
    # Every validation image is counted once: accuracy is a multiple of 1/6.
    assert abs(results["test_accuracy"] * 6 - round(results["test_accuracy"] * 6)) < 1e-6


def test_missing_image_folder_is_one_line(tmp_path):
    result = run_cnnjax(
        "train",
        f"--config={RECIPE}:dataset=imagefolder,smoke",
        f"--workdir={tmp_path / 'run'}",
    )
    assert result.returncode == 2
    assert "data.name=imagefolder needs --config.data.image_folder=DIR" in result.stderr
    assert result.stderr.strip().count("\n") == 0
