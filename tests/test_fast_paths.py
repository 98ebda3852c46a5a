"""Every fast path computes what the plain path computes (outputs and gradients, float32)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import fast_paths, models
from cnnjax.models.layers import pool

# One process computes logits and gradients of two models on fixed inputs and prints them;
# run once with fast paths off and once on, the two must agree. tanh, not ReLU: any change in
# the order of float32 sums can put a pre-activation within rounding of 0 on the other side of
# ReLU's kink, which moved one channel's gradient of ResNet-20 by 3% on one CPU.
_CHILD = r"""
import json, os, sys
import jax, jax.numpy as jnp, numpy as np
from cnnjax import models
out = {"xla_flags": os.environ.get("XLA_FLAGS", "")}
rng = np.random.default_rng(0)
for name, shape, options in [
    ("lenet5", (16, 28, 28, 1), {"normalization": "batch", "activation": "tanh"}),
    ("resnet20", (8, 32, 32, 3), {"activation": "tanh"}),
]:
    model = models.create(name, **options)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"])
        return (logits ** 2).mean(), logits
    grads, logits = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    out[name] = {"logits": np.asarray(logits).tolist(),
                 "grads": [np.asarray(g).ravel().tolist() for g in jax.tree.leaves(grads)]}
print(json.dumps(out))
"""


def _run_child(fast: bool) -> dict:
    env = {**os.environ, fast_paths.ENV_VARIABLE: "1" if fast else "0"}
    env.pop(fast_paths.YNN_ENV_VARIABLE, None)  # the flag's default: on with the fast paths
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _close(fast, plain, scale=None, rtol=1e-4):
    """max |fast - plain| below rtol x the largest |plain| (or x `scale`, when given)."""
    fast, plain = np.asarray(fast), np.asarray(plain)
    scale = scale or max(float(np.abs(plain).max()), 1e-30)
    return float(np.abs(fast - plain).max()) / scale < rtol


def test_xla_flag_gives_the_same_logits_and_gradients():
    plain, fast = _run_child(False), _run_child(True)
    assert fast_paths.YNN_FLAG not in plain["xla_flags"]
    assert fast_paths.YNN_FLAG in fast["xla_flags"]
    for name in ("lenet5", "resnet20"):
        assert _close(fast[name]["logits"], plain[name]["logits"]), name
        assert len(fast[name]["grads"]) == len(plain[name]["grads"])
        # Each parameter's gradient against its own size, except those that are zero up to
        # rounding (a bias followed by batch norm: ~1e-10), compared at the model's scale.
        largest = max(float(np.abs(g).max()) for g in plain[name]["grads"])
        for g_fast, g_plain in zip(fast[name]["grads"], plain[name]["grads"], strict=True):
            scale = max(float(np.abs(g_plain).max()), 1e-3 * largest)
            assert _close(g_fast, g_plain, scale), name


@pytest.mark.parametrize("kind", ["max", "average"])
@pytest.mark.parametrize("shape", [(4, 28, 28, 6), (2, 10, 10, 16)])
def test_reshape_pooling_equals_reduce_window(kind, shape):
    x = jax.random.normal(jax.random.PRNGKey(1), shape)  # continuous values: no ties

    def pooled(fast):
        with fast_paths.use(fast):
            f = lambda x: (pool(x, kind, 2, 2) ** 2).sum()  # noqa: E731
            return jax.jit(lambda x: pool(x, kind, 2, 2))(x), jax.jit(jax.grad(f))(x)

    (y_fast, g_fast), (y_plain, g_plain) = pooled(True), pooled(False)
    assert y_fast.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    np.testing.assert_array_equal(y_fast, y_plain)
    np.testing.assert_allclose(g_fast, g_plain, rtol=1e-6, atol=1e-6)
    with fast_paths.use(False):
        plain_hlo = jax.jit(lambda x: pool(x, kind, 2, 2)).lower(x).as_text()
    with fast_paths.use(True):
        fast_hlo = jax.jit(lambda x: pool(x, kind, 2, 2)).lower(x).as_text()
    assert "reduce_window" in plain_hlo and "reduce_window" not in fast_hlo


def test_lenet5_logits_and_gradients_equal_with_either_pooling():
    model = models.create("lenet5", normalization="batch")
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)

    def loss(params):
        logits, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return (logits**2).mean(), logits

    results = {}
    for fast in (True, False):
        with fast_paths.use(fast):
            results[fast] = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    (g_fast, l_fast), (g_plain, l_plain) = results[True], results[False]
    np.testing.assert_allclose(l_fast, l_plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_environment_switch_and_user_flags(monkeypatch):
    monkeypatch.setenv(fast_paths.ENV_VARIABLE, "0")
    assert not fast_paths.enabled_by_environment() and not fast_paths.active()
    with fast_paths.use(True):
        assert fast_paths.active()
    monkeypatch.setenv(fast_paths.ENV_VARIABLE, "1")
    assert fast_paths.active()
    # A user's own choice of the flag is kept; after the backend started nothing is added.
    user_choice = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_ELTWISE"
    monkeypatch.delenv(fast_paths.YNN_ENV_VARIABLE, raising=False)
    monkeypatch.setenv("XLA_FLAGS", user_choice)
    assert not fast_paths.add_xla_flags()
    assert os.environ["XLA_FLAGS"] == user_choice
    monkeypatch.setenv("XLA_FLAGS", "")
    jnp.zeros(1).block_until_ready()  # the backend is running in this process
    assert not fast_paths.add_xla_flags()
    assert os.environ["XLA_FLAGS"] == ""


def test_ynn_flag_is_on_by_default_and_each_switch_turns_it_off():
    def flags_seen(**switches: str) -> str:
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env.pop(fast_paths.YNN_ENV_VARIABLE, None)
        env.update(switches)
        script = "import os, cnnjax; print(os.environ.get('XLA_FLAGS', ''))"
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    assert fast_paths.YNN_FLAG in flags_seen()
    assert flags_seen(**{fast_paths.YNN_ENV_VARIABLE: "0"}) == ""
    assert flags_seen(**{fast_paths.ENV_VARIABLE: "0"}) == ""


def test_default_path_resnet20_gradient_matches_float64():
    """The default path (this process's flags) keeps float32 accuracy: measured 8.6e-6 of the
    largest gradient with the YNNPACK flag, 7.8e-6 without. tanh keeps ReLU's kink, where
    float32 noise can pick the other side, out of the comparison."""
    model = models.create("resnet20", num_classes=10, normalization="batch", activation="tanh")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 16, 16, 3))
    labels = jax.nn.one_hot(rng.integers(0, 10, 32), 10)
    variables = model.init(jax.random.key(0), x[:1].astype(np.float32), train=False)

    def loss(params, images):
        logits, _ = model.apply(
            {**variables, "params": params}, images, train=True, mutable=["batch_stats"]
        )
        return -(jax.nn.log_softmax(logits) * labels.astype(logits.dtype)).sum(-1).mean()

    gradient = jax.jit(jax.grad(loss))(variables["params"], x.astype(np.float32))
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda p: np.asarray(p, np.float64), variables["params"])
        reference = jax.jit(jax.grad(loss))(params64, x)
    for g32, g64 in zip(jax.tree.leaves(gradient), jax.tree.leaves(reference), strict=True):
        assert _close(g32, g64, rtol=5e-5)


def test_compilation_cache_is_written_and_unwritable_folders_only_warn(tmp_path, capsys):
    cache = tmp_path / "cache"
    script = (
        "import jax, jax.numpy as jnp\n"
        "from cnnjax import fast_paths, models\n"
        f"assert fast_paths.enable_compilation_cache({str(cache)!r})\n"
        "model = models.create('resnet20')\n"
        "x = jnp.ones((2, 32, 32, 3))\n"
        "jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    assert any(entry.name.startswith("jit_") for entry in cache.iterdir())
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    assert not fast_paths.enable_compilation_cache(str(blocked / "cache"))
    assert "compilation cache off" in capsys.readouterr().err
