"""State dicts on disk: `.safetensors` (read and written without torch) and torch's `.pth`.

A `.pth` is a pickle that only torch can read; it is loaded with `weights_only=True` (no code
runs from the file) and its tensors turned into numpy arrays. Checkpoints that wrap the state
dict (timm's and many training scripts' {'state_dict': ...} or {'model': ...}, DataParallel's
'module.' prefixes) are unwrapped.
"""

from __future__ import annotations

import os

import numpy as np

from cnnjax.errors import UserError

SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of `path` (.safetensors, or .pth/.pt/.bin with torch installed) as numpy."""
    if not os.path.isfile(path):
        raise UserError(f"no weights file {path}: give --file=PATH.safetensors or PATH.pth")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception as error:  # noqa: BLE001 (safetensors raises its own error types)
            raise UserError(f"{path} is not a readable safetensors file ({error})") from None
    if not path.endswith(SUFFIXES):
        raise UserError(f"{path}: weights files end in {', '.join(SUFFIXES)}")
    torch = _torch(f"reading {os.path.basename(path)}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (pickle, zip and torch errors alike)
        raise UserError(f"{path} is not a readable torch file ({type(error).__name__})") from None
    return _unwrap({k: v.detach().cpu().numpy() for k, v in _state_dict(loaded).items()})


def _state_dict(loaded) -> dict:
    if isinstance(loaded, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(loaded.get(key), dict):
                return loaded[key]
        return loaded
    if hasattr(loaded, "state_dict"):
        return loaded.state_dict()
    raise UserError("the torch file holds no state dict: save model.state_dict()")


def _unwrap(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """DataParallel's and torch.compile's prefixes removed."""
    for prefix in ("module.", "_orig_mod."):
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def write_state_dict(tensors: dict[str, np.ndarray], path: str) -> None:
    """Writes `tensors` as .safetensors, or as a torch state dict (.pth/.pt) with torch."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path)
        return
    if not path.endswith((".pth", ".pt")):
        raise UserError(f"{path}: write weights to a .safetensors or .pth file")
    torch = _torch(f"writing {os.path.basename(path)}")
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, path)


def _torch(purpose: str):
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{purpose} needs PyTorch (pip install -e '.[bench]'); .safetensors files need no torch"
        ) from None
    return torch
