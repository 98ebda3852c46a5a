"""Every registered variant: one short function per name, grouped by family."""

from __future__ import annotations

from cnnjax.models.alexnet import AlexNet
from cnnjax.models.dense import MLP
from cnnjax.models.dilated import DilatedContextNet
from cnnjax.models.googlenet import GoogLeNet
from cnnjax.models.inception_v3 import InceptionV3
from cnnjax.models.lenet import LeNet5
from cnnjax.models.registry import register
from cnnjax.models.resnet import CifarResNet, ResNet, WideResNet
from cnnjax.models.small_convnets import CifarConvNet
from cnnjax.models.unet import UNet
from cnnjax.models.vgg import VGG
from cnnjax.models.volumetric import C3D, ConvNet1D


@register("lenet5", family=LeNet5, input_shape=(32, 32, 1))
def lenet5(**options) -> LeNet5:
    return LeNet5(**options)


@register("lenet5_local", family=LeNet5, input_shape=(32, 32, 1))
def lenet5_local(**options) -> LeNet5:
    return LeNet5(**{"locally_connected": True, **options})


@register("logistic", family=MLP, input_shape=(28, 28, 1))
def logistic(**options) -> MLP:
    return MLP(**{"hidden_sizes": (), **options})


@register("mlp", family=MLP, input_shape=(28, 28, 1))
def mlp(**options) -> MLP:
    return MLP(**options)


@register("alexnet", family=AlexNet, input_shape=(224, 224, 3))
def alexnet(**options) -> AlexNet:
    return AlexNet(**options)


@register("alexnet_paper", family=AlexNet, input_shape=(227, 227, 3))
def alexnet_paper(**options) -> AlexNet:
    return AlexNet(**{"paper": True, **options})


@register("alexnet_twotower", family=AlexNet, input_shape=(227, 227, 3))
def alexnet_twotower(**options) -> AlexNet:
    return AlexNet(**{"paper": True, "groups": 2, **options})


def _vgg(depth: int, normalization: str):
    def build(**options) -> VGG:
        return VGG(**{"depth": depth, "normalization": normalization, **options})

    return build


for _depth in (11, 13, 16, 19):
    register(f"vgg{_depth}", family=VGG, input_shape=(224, 224, 3))(_vgg(_depth, "none"))
    register(f"vgg{_depth}_bn", family=VGG, input_shape=(224, 224, 3))(_vgg(_depth, "batch"))


@register("cifar_convnet", family=CifarConvNet, input_shape=(32, 32, 3))
def cifar_convnet(**options) -> CifarConvNet:
    return CifarConvNet(**options)


@register("dilated_context", family=DilatedContextNet, input_shape=(64, 64, 1), task="segmentation")
def dilated_context(**options) -> DilatedContextNet:
    return DilatedContextNet(**options)


@register("unet", family=UNet, input_shape=(256, 256, 1), task="segmentation")
def unet(**options) -> UNet:
    return UNet(**options)


@register("unet_small", family=UNet, input_shape=(64, 64, 1), task="segmentation")
def unet_small(**options) -> UNet:
    return UNet(**{"base_features": 16, "depth": 3, **options})


@register("convnet1d", family=ConvNet1D, input_shape=(28, 28))
def convnet1d(**options) -> ConvNet1D:
    return ConvNet1D(**options)


@register("c3d", family=C3D, input_shape=(16, 112, 112, 3))
def c3d(**options) -> C3D:
    return C3D(**options)


@register("c3d_small", family=C3D, input_shape=(8, 44, 44, 1))
def c3d_small(**options) -> C3D:
    small = {
        "stages": ((8,), (16,), (32,)),
        "hidden_units": 0,
        "num_classes": 10,
        "normalization": "batch",
        "dropout_rate": 0.0,
    }
    return C3D(**{**small, **options})


RESNET_STAGES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


def _resnet(depth: int):
    def build(**options) -> ResNet:
        return ResNet(**{"stage_sizes": RESNET_STAGES[depth], "bottleneck": depth >= 50, **options})

    return build


def _wide_bottleneck_resnet(depth: int):
    def build(**options) -> ResNet:
        return _resnet(depth)(**{"width_per_group": 128, **options})

    return build


def _cifar_resnet(depth: int):
    def build(**options) -> CifarResNet:
        return CifarResNet(**{"depth": depth, **options})

    return build


def _wide_resnet(depth: int, widen_factor: int):
    def build(**options) -> WideResNet:
        return WideResNet(**{"depth": depth, "widen_factor": widen_factor, **options})

    return build


for _depth in RESNET_STAGES:
    register(f"resnet{_depth}", family=ResNet, input_shape=(224, 224, 3))(_resnet(_depth))
# torchvision's names: ImageNet bottleneck ResNets with inner widths doubled, not the CIFAR WRNs
# (wrn{depth}_{k}) below.
for _depth in (50, 101):
    register(f"wide_resnet{_depth}_2", family=ResNet, input_shape=(224, 224, 3))(
        _wide_bottleneck_resnet(_depth)
    )
for _depth in (20, 32, 44, 56, 110):
    register(f"resnet{_depth}", family=CifarResNet, input_shape=(32, 32, 3))(_cifar_resnet(_depth))
for _depth, _k in ((16, 8), (28, 2), (28, 10), (40, 4)):
    register(f"wrn{_depth}_{_k}", family=WideResNet, input_shape=(32, 32, 3))(
        _wide_resnet(_depth, _k)
    )


@register("googlenet", family=GoogLeNet, input_shape=(224, 224, 3))
def googlenet(**options) -> GoogLeNet:
    return GoogLeNet(**options)


@register("inception_v3", family=InceptionV3, input_shape=(299, 299, 3))
def inception_v3(**options) -> InceptionV3:
    return InceptionV3(**options)
