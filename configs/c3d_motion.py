"""A C3D-style 3-D convolution net on clips of moving Fashion-MNIST items (offline).

    cnnjax train --config=configs/c3d_motion.py --workdir=runs/c3d_motion

Reaches test accuracy 1.000 (chance 0.125) after its first epoch; both epochs take about
3.5 minutes on 2 CPU cores (201 s; benchmarks/results/recipes.json).

Task (cnnjax/data/tasks.py, `motion`): 8 frames of 44x44, one item moving 2 pixels per frame in
one of 8 directions; the label is the direction, so a single frame gives only chance (12.5%).
Model `c3d_small` (3x3x3 convolutions 8-16-32, pools 1x2x2 then 2x2x2, batch norm; 40,658
parameters). Adam 2e-3, cosine, batch 64. The direction is easy once time is convolved; the
time goes into 3-D convolutions, which are slow on XLA:CPU (about 70-100 clips/s).
"""

from cnnjax.config_base import get_base_config, parse_arg, shrink_for_smoke, use_fashion_mnist_task


def get_config(arg: str | None = None):
    args = parse_arg(arg, smoke=False)
    config = use_fashion_mnist_task(get_base_config(), "motion", train_examples=6000)
    config.model.name = "c3d_small"
    config.data.eval_split = "test[:2000]"
    config.train.epochs = 2
    return shrink_for_smoke(config) if args.smoke else config
