"""torchvision for the tests and fixture scripts that compare with it, or None without it.

The classification models and transforms need only torch's own operators. torchvision's
compiled extension (detection operators such as nms) must match the torch build exactly; where it
does not (PyPI's torchvision built for CUDA beside a CPU build of torch, as on the development
machine), `import torchvision` fails while registering those operators. Then the import is
retried without them, which leaves the models and transforms as they are.
"""

from __future__ import annotations

import importlib
import sys
import types


def import_torchvision():
    """The `torchvision` module, or None when torch or torchvision is not installed."""
    try:
        importlib.import_module("torch")
    except ImportError:
        return None
    try:
        return importlib.import_module("torchvision")
    except ImportError:
        return None
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    sys.modules["torchvision._meta_registrations"] = types.ModuleType(
        "torchvision._meta_registrations"
    )
    return importlib.import_module("torchvision")
