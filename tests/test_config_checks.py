"""Each stage checks its own config section; `validate_config` runs them all, and skips the
sections a run given its own model or data does not use. (The messages of single bad values are
pinned in tests/test_input_faults.py.)"""

import pytest

from cnnjax.config_base import get_base_config
from cnnjax.data.config_checks import validate_data_config
from cnnjax.errors import UserError
from cnnjax.models.config_checks import validate_model_config
from cnnjax.train.config_checks import validate_config
from cnnjax.train.optim import validate_optimizer_config


def _config(**settings):
    config = get_base_config()
    config.update_from_flattened_dict(settings)
    return config


def test_each_stage_refuses_its_own_section_only():
    model = _config(**{"model.name": "lenet7"})
    data = _config(**{"data.name": "imagenet9"})
    optimizer = _config(**{"optimizer.learning_rate": -1.0})
    with pytest.raises(UserError, match="^unknown model 'lenet7': choose one of"):
        validate_model_config(model)
    with pytest.raises(UserError, match="^unknown dataset 'imagenet9': choose one of"):
        validate_data_config(data)
    with pytest.raises(UserError, match=r"^config.optimizer.learning_rate must be > 0 \(got -1"):
        validate_optimizer_config(optimizer)
    for check, others in (
        (validate_model_config, (data, optimizer)),
        (validate_data_config, (model, optimizer)),
        (validate_optimizer_config, (model, data)),
    ):
        for config in others:
            check(config)


def test_sections_are_checked_model_then_data_then_optimizer_then_train():
    bad = {"model.name": "x", "data.workers": 0, "optimizer.momentum": 1.0, "train.ema_decay": 1.0}
    config = _config(**bad)
    first_words = []
    for key in bad:  # fixing each problem in turn shows the next one
        with pytest.raises(UserError) as error:
            validate_config(config)
        first_words.append(str(error.value).split()[0])
        config.update_from_flattened_dict({key: _base_value(key)})
    assert first_words == [
        "unknown",
        "config.data.workers",
        "config.optimizer.momentum",
        "config.train.ema_decay",
    ]
    validate_config(config)


def _base_value(key: str):
    node = get_base_config()
    for name in key.split("."):
        node = node[name]
    return node


def test_a_run_with_its_own_model_or_data_skips_their_sections():
    config = _config(**{"model.name": "mine", "data.name": "mine"})
    validate_config(config, custom_model=True, custom_data=True)
    with pytest.raises(UserError, match="^unknown model 'mine'"):
        validate_config(config, custom_data=True)
    with pytest.raises(UserError, match="^unknown dataset 'mine'"):
        validate_config(_config(**{"data.name": "mine"}), custom_model=True)
    # The training loop batches any data with these, so they are checked still.
    small = _config(**{"model.name": "mine", "data.name": "mine", "data.batch_size": 0})
    with pytest.raises(UserError, match=r"^config.data.batch_size must be > 0 \(got 0\)"):
        validate_config(small, custom_model=True, custom_data=True)


def test_mirrored_evaluation_is_refused_outside_image_classification():
    config = _config(
        **{"train.eval_mirrored": True, "data.task": "rows", "model.name": "convnet1d"}
    )
    with pytest.raises(UserError) as error:
        validate_config(config, custom_data=True)
    assert str(error.value) == (
        "train.eval_mirrored mirrors test images of a classification task, not of the 'rows' "
        "task: set train.eval_mirrored=False"
    )
    config.data.task = "classification"
    config.model.name = "lenet5"
    validate_config(config, custom_data=True)
