"""Published weights in and out: torchvision / timm state dicts <-> cnnjax runs."""

from cnnjax.weights.convert import flax_to_torch, torch_to_flax
from cnnjax.weights.layouts import timm_layout, torchvision_layout
from cnnjax.weights.runs import ARCHITECTURES, export_weights, import_weights
from cnnjax.weights.tensor_files import read_state_dict, write_state_dict

__all__ = [
    "ARCHITECTURES",
    "export_weights",
    "flax_to_torch",
    "import_weights",
    "read_state_dict",
    "timm_layout",
    "torch_to_flax",
    "torchvision_layout",
    "write_state_dict",
]
