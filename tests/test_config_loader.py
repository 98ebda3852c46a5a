"""`load_config`: the config `cnnjax train --config=FILE:ARG --config.KEY=VALUE` trains with, and
the command line's one-line refusals."""

import subprocess
import sys

import pytest
from conftest import RECIPE, ROOT

from cnnjax.config_loader import load_config
from cnnjax.errors import UserError

OVERRIDES = [
    "--config.optimizer.learning_rate=0.5",
    "--config.optimizer.decay_epochs=(1,2)",
    "--config.data.augment.horizontal_flip=True",
    "--config.seed=7",
]

# The command line's own flags (cnnjax/cli.py) parse the arguments in a fresh interpreter:
# absl's flags are process-wide, and this process must not define them.
_COMMAND_LINE_CONFIG = """
import sys
from absl import flags
import cnnjax.cli  # defines --config as the command line does
flags.FLAGS(sys.argv)
print(flags.FLAGS.config.to_json_best_effort(sort_keys=True))
"""


def test_the_config_is_the_one_the_command_line_builds():
    args = [f"--config={RECIPE}:smoke", *OVERRIDES]
    result = subprocess.run(
        [sys.executable, "-c", _COMMAND_LINE_CONFIG, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    config = load_config(f"{RECIPE}:smoke", OVERRIDES)
    assert config.to_json_best_effort(sort_keys=True) == result.stdout.strip()
    assert config.optimizer.learning_rate == 0.5
    assert config.optimizer.decay_epochs == (1, 2)
    assert config.data.augment.horizontal_flip is True
    assert config.seed == 7
    assert config.train.epochs == load_config(f"{RECIPE}:smoke").train.epochs  # :smoke applied


def test_overrides_as_a_dict_or_without_the_flag_prefix_give_the_same_config():
    expected = load_config(RECIPE, OVERRIDES).to_json_best_effort(sort_keys=True)
    plain = [o.removeprefix("--config.") for o in OVERRIDES]
    values = {
        "optimizer": {"learning_rate": 0.5, "decay_epochs": (1, 2)},
        "data.augment.horizontal_flip": True,
        "seed": 7,
    }
    assert load_config(RECIPE, plain).to_json_best_effort(sort_keys=True) == expected
    assert load_config(RECIPE, values).to_json_best_effort(sort_keys=True) == expected


def test_the_config_is_locked_as_on_the_command_line():
    config = load_config(RECIPE)
    config.optimizer.learning_rate = 0.1  # existing keys change
    with pytest.raises(AttributeError):
        config.optimizer.learning_rat = 0.1  # a typo does not add a key


@pytest.mark.parametrize(
    "recipe, overrides, message",
    [
        (
            "def get_config(arg=None):\n    config = dict(seed=0)\n",  # forgot the return
            [],
            "cannot load '{path}': get_config() returned NoneType, not an "
            "ml_collections.ConfigDict",
        ),
        (
            "import ml_collections\n\nCONFIG = ml_collections.ConfigDict()\n",
            [],
            "{path} defines no get_config(): a recipe file defines get_config(arg=None) "
            "returning an ml_collections.ConfigDict (see configs/lenet5_fashion_mnist.py)",
        ),
        (
            "def get_config(arg=None):\n    raise RuntimeError('no GPU here')\n",
            [],
            "cannot load '{path}' (RuntimeError: no GPU here)",
        ),
        (
            "from cnnjax.config_base import get_base_config as get_config\n",
            ["--config.optimizer.lr=0.1"],
            "unknown flag or config key (\"'lr'\"): check the key against the config file "
            "(overrides cannot add keys) or see --helpfull",
        ),
        (
            "from cnnjax.config_base import get_base_config as get_config\n",
            ["optimizer.learning_rate=abc"],
            "flag --config.optimizer.learning_rate=abc: could not convert string to float: "
            "'abc' (check the flag's value; --helpfull lists flags)",
        ),
    ],
    ids=["returns_none", "no_get_config", "raises", "unknown_key", "bad_value"],
)
def test_a_bad_recipe_or_override_is_one_user_error(tmp_path, recipe, overrides, message):
    load_config(RECIPE)  # a recipe loaded before must not lend the next file its get_config
    path = tmp_path / "recipe.py"
    path.write_text(recipe)
    with pytest.raises(UserError) as error:
        load_config(str(path), overrides)
    assert str(error.value) == message.format(path=path)


def test_a_missing_file_or_argument_is_one_user_error(tmp_path):
    missing = tmp_path / "missing.py"
    with pytest.raises(UserError) as error:
        load_config(str(missing))
    assert str(error.value) == (
        f"cannot load '{missing}': [Errno 2] No such file or directory: '{missing}'"
    )
    with pytest.raises(UserError, match="unknown config argument 'smok'"):
        load_config(f"{RECIPE}:smok")
    # A bool argument takes only the words for true and false: a typo is not False.
    with pytest.raises(UserError, match="config argument smoke='Ture' is not a bool"):
        load_config(f"{RECIPE}:smoke=Ture")
    assert load_config(f"{RECIPE}:smoke=no").train.epochs == load_config(RECIPE).train.epochs
    assert (
        load_config(f"{RECIPE}:smoke=yes").train.epochs
        == load_config(f"{RECIPE}:smoke").train.epochs
    )
