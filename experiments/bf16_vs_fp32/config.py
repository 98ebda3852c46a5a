"""bf16 vs float32 compute: does mixed precision cost accuracy? (the default LeNet-5 recipe)

    cnnjax sweep --config=experiments/bf16_vs_fp32/config.py --workdir=runs/bf16_vs_fp32 --workers=2

The default recipe (LeNet-5 with batch norm on Fashion-MNIST, 15 epochs, Adam 2e-3 cosine,
flips) with `train.compute_dtype` float32 or bfloat16 (forward and backward passes in bf16;
parameters, gradients and optimizer state in float32). On CPU, bf16 is emulated and slower;
the question here is accuracy only. Arguments: seeds=1,2 (a comma-free list: `seeds=12` means
seeds 1 and 2), smoke.
"""

import ml_collections

from cnnjax.config_base import parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, seeds="12", smoke=False)
    sweep = ml_collections.ConfigDict()
    sweep.base = "../../configs/lenet5_fashion_mnist.py" + (":smoke" if args.smoke else "")
    sweep.overrides = {}
    if args.smoke:  # 8 steps: the recipe's own smoke variant trains 40
        sweep.overrides = {"data": {"train_split": "train[:512]", "eval_split": "test[:256]"}}
    sweep.axes = [{"train.compute_dtype": ("float32", "bfloat16")}]
    sweep.seeds = tuple(int(s) for s in args.seeds)
    sweep.report = {"metrics": ("test_accuracy", "train_accuracy", "test_loss")}
    return sweep
