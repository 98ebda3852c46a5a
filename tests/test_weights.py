"""torchvision and timm weights into cnnjax models and back (cnnjax/weights).

The default suite needs no torch: tests/fixtures/torchvision_logits.npz holds, per
architecture, the names and shapes of torchvision's state dict and the logits torch computed
from tests/weight_fixtures.py's seeded weights. With torch and torchvision installed
(`.[bench]`), the tests at the end also build torchvision and timm models live.
"""

import json
import os

import jax
import numpy as np
import PIL.Image
import pytest
from conftest import ROOT, run_cnnjax
from torchvision_support import import_torchvision
from weight_fixtures import FIXTURE, INPUT_SIZES, fixture_input, fixture_weights

from cnnjax import UserError, load_config, train_and_evaluate
from cnnjax.weights import (
    export_weights,
    flax_to_torch,
    import_weights,
    read_state_dict,
    torchvision_layout,
    write_state_dict,
)
from cnnjax.weights.runs import imported_model

TOLERANCE = 1e-4  # of the largest logit


@pytest.fixture(scope="module")
def stored():
    return dict(np.load(FIXTURE))


def _shapes(stored, arch: str) -> dict[str, tuple[int, ...]]:
    entries = (line.rsplit(":", 1) for line in stored[f"{arch}/keys"].tolist())
    return {key: tuple(int(d) for d in shape.split(",") if d) for key, shape in entries}


def _logits(model, variables, x: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))


# One architecture of each layout in the default suite; the deeper ones differ only in their
# block counts (VGG's 9-11 s each are fc6's 102M weights): `-m slow`.
SAME_LAYOUT_AS_A_DEFAULT_ONE = {
    "resnet34", "resnet101", "resnet152", "wide_resnet101_2",
    "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
}  # fmt: skip


@pytest.mark.parametrize(
    "arch",
    [
        pytest.param(arch, marks=pytest.mark.slow) if arch in SAME_LAYOUT_AS_A_DEFAULT_ONE else arch
        for arch in INPUT_SIZES
    ],
)
def test_torchvision_weights_give_torchs_logits_and_export_back(stored, arch):
    shapes = _shapes(stored, arch)
    weights = fixture_weights(shapes)
    _, model, variables = imported_model(f"torchvision:{arch}", weights)
    expected = stored[f"{arch}/logits"]
    got = _logits(model, variables, fixture_input(arch))
    difference = np.abs(got - expected).max() / np.abs(expected).max()
    assert difference <= TOLERANCE, f"{arch}: {difference:.2e}"
    # Export gives torchvision's exact names and shapes, and the tensors imported (vgg*_bn's
    # convolution biases folded into the running means, where cnnjax keeps them).
    layout = torchvision_layout(model)
    exported = flax_to_torch(jax.device_get(variables), layout, conv_bias_before_norm="_bn" in arch)
    assert {k: tuple(v.shape) for k, v in exported.items()} == shapes
    for key, value in exported.items():
        if key.endswith("num_batches_tracked"):
            continue
        if (
            "_bn" in arch
            and key.startswith("features.")
            and not np.array_equal(value, weights[key])
        ):
            assert key.endswith((".bias", ".running_mean")), key  # the folded pairs only
            continue
        assert np.array_equal(value, weights[key]), key  # (faster than assert_array_equal)


def _small_resnet_file(tmp_path, stored, suffix=".safetensors") -> str:
    path = str(tmp_path / f"resnet18{suffix}")
    write_state_dict(fixture_weights(_shapes(stored, "resnet18")), path)
    return path


def test_import_makes_a_run_that_predict_and_export_read(tmp_path, stored, capsys):
    from cnnjax.inspect.predict import predict

    weights_file = _small_resnet_file(tmp_path, stored)
    workdir = str(tmp_path / "run")
    imported = import_weights("torchvision:resnet18", weights_file, workdir)
    assert imported["num_classes"] == 1000 and imported["model"] == "resnet18"
    assert imported["evaluation"] == {"resize": 256, "crop": 224, "interpolation": "bilinear"}
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["data"]["jpeg_draft"] is False and config["data"]["eval_resize"] == 256
    # predict: the stored logits of the fixture input, through the saved checkpoint, in batches
    # of 1 (the last of 2 padded on more devices).
    np.save(tmp_path / "x.npy", fixture_input("resnet18"))
    summary = predict(workdir, str(tmp_path / "x.npy"), str(tmp_path / "logits.npy"), batch_size=1)
    assert (summary["rows"], summary["classes"], summary["step"]) == (2, 1000, 0)
    logits, expected = np.load(tmp_path / "logits.npy"), stored["resnet18/logits"]
    assert np.abs(logits - expected).max() <= TOLERANCE * np.abs(expected).max()
    # A folder of images goes through the run's evaluation transform (torchvision's: shorter
    # side 256, center crop 224) and ImageNet normalization: the logits of those inputs as .npy.
    from cnnjax.data.image_decoding import eval_transform
    from cnnjax.data.imagenet import IMAGENET_MEAN, IMAGENET_STD

    folder = tmp_path / "photos"
    os.makedirs(folder / "sub")
    rng = np.random.default_rng(2)
    for name, size in (("b.png", (300, 260)), ("sub/a.jpg", (240, 320))):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        PIL.Image.fromarray(pixels).save(folder / name)
    files = [str(folder / "b.png"), str(folder / "sub" / "a.jpg")]  # sorted paths
    crops = [eval_transform(open(f, "rb").read(), 224, 256, draft=False) for f in files]
    normalized = (np.stack(crops) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.save(tmp_path / "crops.npy", normalized.astype(np.float32))
    predict(workdir, str(tmp_path / "crops.npy"), str(tmp_path / "by_hand.npy"))
    summary = predict(workdir, str(folder), str(tmp_path / "folder.npy"))
    assert summary["files"] == files
    assert (tmp_path / "folder.txt").read_text().splitlines() == files
    by_hand, from_folder = np.load(tmp_path / "by_hand.npy"), np.load(tmp_path / "folder.npy")
    np.testing.assert_allclose(from_folder, by_hand, rtol=0, atol=1e-4 * np.abs(by_hand).max())
    assert not np.allclose(from_folder[0], from_folder[1])
    # export gives back the imported tensors.
    out = str(tmp_path / "out.safetensors")
    assert export_weights(workdir, out) == len(_shapes(stored, "resnet18"))
    original, exported = read_state_dict(weights_file), read_state_dict(out)
    assert exported.keys() == original.keys()
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_bad_weights_are_one_line(tmp_path, stored):
    weights_file = _small_resnet_file(tmp_path, stored)
    cases = {
        "--from='torchvision:resnet17': torchvision architectures are": (
            "torchvision:resnet17",
            weights_file,
        ),
        "--from='keras:resnet18': give torchvision:ARCH or timm:ARCH": (
            "keras:resnet18",
            weights_file,
        ),
        # ResNet-18's tensors where ResNet-34 has more blocks.
        "the weights have no tensor 'layer1.2.conv1.weight'": (
            "torchvision:resnet34",
            weights_file,
        ),
        "no weights file": ("torchvision:resnet18", str(tmp_path / "missing.safetensors")),
    }
    for index, (message, (source, path)) in enumerate(cases.items()):
        with pytest.raises(UserError) as error:
            import_weights(source, path, str(tmp_path / f"run{index}"))
        assert str(error.value).startswith(message) or message in str(error.value), error.value
        assert "\n" not in str(error.value)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="is not a readable safetensors file"):
        read_state_dict(str(tmp_path / "broken.safetensors"))
    weights = read_state_dict(weights_file)
    weights["fc.weight"] = weights["fc.weight"][:, :100]
    with pytest.raises(UserError, match=r"tensor 'fc' has shape \(100, 1000\)"):
        imported_model("torchvision:resnet18", weights)
    weights = read_state_dict(weights_file)
    weights["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(UserError, match="tensors extra.weight have no place in this model"):
        imported_model("torchvision:resnet18", weights)
    import_weights("torchvision:resnet18", weights_file, str(tmp_path / "twice"))
    with pytest.raises(UserError, match="already holds a run"):
        import_weights("torchvision:resnet18", weights_file, str(tmp_path / "twice"))


def test_finetune_an_imported_resnet18_on_fashion_mnist(tmp_path, stored, data_dir, capsys):
    """ImageNet-layout weights for 1000 classes, fine-tuned on 28x28 gray images upscaled to
    56x56 by the recipe: the convolutions load (the first one's RGB kernel summed for gray
    inputs), the 1000-class head does not fit the 10 classes and starts fresh. In this process
    (the recipe is what is tested, not the command's start; the bad import below is one line)."""
    imported = str(tmp_path / "imported")
    import_weights("torchvision:resnet18", _small_resnet_file(tmp_path, stored), imported)
    workdir = tmp_path / "finetuned"
    recipe = os.path.join(ROOT, "configs", "finetune_imagenet_weights.py")
    config = load_config(f"{recipe}:smoke", {"init_from": imported, "data.data_dir": data_dir})
    capsys.readouterr()
    train_and_evaluate(config, str(workdir))
    out = capsys.readouterr()
    report = next(line for line in (out.out + out.err).splitlines() if "initialized from" in line)
    # 62 arrays in ResNet-18's params: all but the head's kernel and bias come from the import.
    assert (
        "(step 0): 60 of 62 parameter arrays loaded; fresh: Dense_0/bias, Dense_0/kernel" in report
    )
    results = json.load(open(workdir / "results.json"))
    assert results["steps"] == 3 and np.isfinite(results["test_loss"])
    bad = run_cnnjax("import-weights", "--from=torchvision:resnet17", "--file=x.pth", "--workdir=y")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "torchvision architectures are resnet18, resnet34" in bad.stderr


LIVE = {  # library:arch -> input size; timm's VGG classifier is a 7x7 conv: 224 only
    "torchvision:resnet18": 64,
    "torchvision:vgg11_bn": 32,
    "torchvision:alexnet": 64,
    "torchvision:googlenet": 32,
    "torchvision:inception_v3": 75,
    "timm:resnet18": 64,
    "timm:inception_v3": 75,
    "timm:vgg11": 224,
}


@pytest.mark.torch
@pytest.mark.parametrize("source", list(LIVE))
def test_live_torch_models_import_and_export(tmp_path, source):
    """With torch installed (`.[bench]`): a randomly initialized torchvision / timm model saved as
    .pth and .safetensors imports with torch's logits, and the export loads back strictly."""
    torchvision = import_torchvision()
    if torchvision is None:
        pytest.skip("torch and torchvision are not installed (pip install -e '.[bench]')")
    import torch

    library, arch = source.split(":")
    if library == "timm":
        timm = pytest.importorskip("timm")
        model = timm.create_model(arch, pretrained=False).eval()
    else:
        options = {"init_weights": True} if arch in ("googlenet", "inception_v3") else {}
        if arch in ("googlenet", "inception_v3"):
            options.update(aux_logits=True, transform_input=True)
        model = getattr(torchvision.models, arch)(**options).eval()
    with torch.no_grad():  # running statistics that are not the identity
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                tensor.normal_(0.0, 0.1)
    x = np.random.default_rng(0).standard_normal((2, LIVE[source], LIVE[source], 3), np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    for suffix in (".pth", ".safetensors"):
        path = str(tmp_path / f"weights{suffix}")
        if suffix == ".pth":
            torch.save(model.state_dict(), path)
        else:
            write_state_dict({k: v.numpy() for k, v in model.state_dict().items()}, path)
        _, cnnjax_model, variables = imported_model(source, read_state_dict(path))
        got = _logits(cnnjax_model, variables, x)
        assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max(), suffix
    if library == "torchvision":
        workdir = str(tmp_path / "run")
        import_weights(source, path, workdir)
        export_weights(workdir, str(tmp_path / "out.pth"))
        fresh = getattr(torchvision.models, arch)(**options).eval()
        fresh.load_state_dict(torch.load(str(tmp_path / "out.pth")), strict=True)
        with torch.no_grad():
            again = fresh(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        np.testing.assert_allclose(again, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
