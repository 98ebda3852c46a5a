"""Every fast path computes what the plain path computes (outputs and gradients, float32)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import fast_paths, models
from cnnjax.models.layers import LayerOptions, pool
from cnnjax.train.state import create_train_state, init_variables

FAST, PLAIN = LayerOptions(), LayerOptions().plain()

# One process computes logits and gradients of two models on fixed inputs and prints them;
# run once with fast paths off (no YNNPACK flag, plain layer options) and once on, the two must
# agree. tanh, not ReLU: any change in the order of float32 sums can put a pre-activation within
# rounding of 0 on the other side of ReLU's kink, which moved one channel's gradient of ResNet-20
# by 3% on one CPU.
_CHILD = r"""
import json, os, sys
from cnnjax import fast_paths
fast_paths.enable()  # an entry point: before JAX starts
import jax, jax.numpy as jnp, numpy as np
from cnnjax import models
from cnnjax.models.layers import LayerOptions
fast = fast_paths.enabled_by_environment()
layer_options = LayerOptions(block_convolutions=fast, reshape_pooling=fast)
out = {"xla_flags": os.environ.get("XLA_FLAGS", "")}
rng = np.random.default_rng(0)
for name, shape, options in [
    ("lenet5", (8, 28, 28, 1), {"normalization": "batch", "activation": "tanh"}),
    ("resnet20", (4, 16, 16, 3), {"activation": "tanh", "depth": 8}),
]:
    model = models.create(name, layer_options=layer_options, **options)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    # Filled on the host from init's shapes: compiling init's random draws took 5-8 s.
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, leaf: rng.normal(size=leaf.shape).astype(np.float32)
        / np.sqrt(np.prod(leaf.shape[:-1])) if path[-1].key == "kernel"
        else np.full(leaf.shape, float(path[-1].key in ("scale", "var")), np.float32), shapes)
    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"])
        return (logits ** 2).mean(), logits
    grads, logits = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    out[name] = {"logits": np.asarray(logits).tolist(),
                 "grads": [np.asarray(g).ravel().tolist() for g in jax.tree.leaves(grads)]}
print(json.dumps(out))
"""


def _start_child(fast: bool) -> subprocess.Popen:
    env = {**os.environ, fast_paths.ENV_VARIABLE: "1" if fast else "0"}
    env.pop(fast_paths.YNN_ENV_VARIABLE, None)  # the flag's default: on with the fast paths
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _result(child: subprocess.Popen) -> dict:
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def _close(fast, plain, scale=None, rtol=1e-4):
    """max |fast - plain| below rtol x the largest |plain| (or x `scale`, when given)."""
    fast, plain = np.asarray(fast), np.asarray(plain)
    scale = scale or max(float(np.abs(plain).max()), 1e-30)
    return float(np.abs(fast - plain).max()) / scale < rtol


def test_xla_flag_gives_the_same_logits_and_gradients():
    # Both at once: most of each child's time is importing and compiling on one core.
    plain, fast = map(_result, [_start_child(False), _start_child(True)])
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

    def pooled(options):
        f = lambda x: (pool(x, kind, 2, 2, layer_options=options) ** 2).sum()  # noqa: E731
        y = jax.jit(lambda x: pool(x, kind, 2, 2, layer_options=options))(x)
        return y, jax.jit(jax.grad(f))(x)

    (y_fast, g_fast), (y_plain, g_plain) = pooled(FAST), pooled(PLAIN)
    assert y_fast.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    np.testing.assert_array_equal(y_fast, y_plain)
    np.testing.assert_allclose(g_fast, g_plain, rtol=1e-6, atol=1e-6)

    def hlo(options):
        return jax.jit(lambda x: pool(x, kind, 2, 2, layer_options=options)).lower(x).as_text()

    assert "reduce_window" in hlo(PLAIN) and "reduce_window" not in hlo(FAST)


def test_lenet5_logits_and_gradients_equal_with_either_pooling():
    model = models.create("lenet5", normalization="batch")
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 28, 28, 1))
    variables = init_variables(model, input_shape=x.shape[1:], seed=0)

    def loss(params, model):
        logits, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return (logits**2).mean(), logits

    gradient = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)  # the model: hashable
    results = {
        options: gradient(variables["params"], model.clone(layer_options=options))
        for options in (FAST, PLAIN)
    }
    (g_fast, l_fast), (g_plain, l_plain) = results[FAST], results[PLAIN]
    np.testing.assert_allclose(l_fast, l_plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_one_jit_traces_again_for_other_layer_options_and_both_agree():
    """The options are a field of the model, so `state.apply_fn` (a static field of the train
    state) differs and one jitted function traces each form, instead of reusing the first."""
    fast = models.create("lenet5", normalization="batch", layer_options=FAST)
    plain = fast.clone(layer_options=PLAIN)
    assert hash(fast) != hash(plain) and fast.apply != plain.apply
    states = {
        name: create_train_state(model, optax.sgd(0.1), input_shape=(28, 28, 1), seed=0)
        for name, model in (("fast", fast), ("plain", plain))
    }
    traces = []

    def logits(state, x):
        traces.append(state.apply_fn.__self__.layer_options)  # runs only while tracing
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return state.apply_fn(variables, x, train=False)

    forward = jax.jit(logits)
    x = jax.random.normal(jax.random.key(3), (4, 28, 28, 1))
    outputs = {name: forward(state, x) for name, state in states.items()}
    forward(states["fast"], x)  # traced already: no third trace
    assert traces == [FAST, PLAIN]
    np.testing.assert_allclose(outputs["fast"], outputs["plain"], rtol=1e-5, atol=1e-5)
    text = {name: forward.lower(state, x).as_text() for name, state in states.items()}
    assert "reduce_window" in text["plain"] and "reduce_window" not in text["fast"]


def test_environment_switch_and_user_flags(monkeypatch):
    monkeypatch.setenv(fast_paths.ENV_VARIABLE, "0")
    assert not fast_paths.enabled_by_environment()
    monkeypatch.setenv(fast_paths.ENV_VARIABLE, "1")
    assert fast_paths.enabled_by_environment()
    # A user's own choice of the flag is kept; after the backend started nothing is added.
    user_choice = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_ELTWISE"
    monkeypatch.delenv(fast_paths.YNN_ENV_VARIABLE, raising=False)
    monkeypatch.setenv("XLA_FLAGS", user_choice)
    assert not fast_paths.enable()
    assert os.environ["XLA_FLAGS"] == user_choice
    monkeypatch.setenv("XLA_FLAGS", "")
    jnp.zeros(1).block_until_ready()  # the backend is running in this process
    assert not fast_paths.enable()
    assert os.environ["XLA_FLAGS"] == ""


def test_importing_cnnjax_leaves_the_flags_and_enable_adds_them_unless_switched_off():
    # One fresh process (no JAX backend yet), which tries each switch in turn.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.pop(fast_paths.YNN_ENV_VARIABLE, None)
    script = (
        "import os, cnnjax, cnnjax.models, cnnjax.train\n"
        "print(repr(os.environ.get('XLA_FLAGS', '')))\n"
        "from cnnjax import fast_paths\n"
        f"for switch in ({fast_paths.YNN_ENV_VARIABLE!r}, {fast_paths.ENV_VARIABLE!r}, None):\n"
        "    os.environ.pop('XLA_FLAGS', None)\n"
        "    os.environ.update({switch: '0'} if switch else {})\n"
        "    fast_paths.enable()\n"
        "    print(repr(os.environ.get('XLA_FLAGS', '')))\n"
        "    os.environ.pop(switch, None) if switch else None\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    imported, ynn_off, fast_paths_off, default = map(eval, done.stdout.split("\n")[:4])
    assert (imported, ynn_off, fast_paths_off) == ("", "", "")
    assert default == fast_paths.YNN_FLAG


def test_default_path_resnet20_gradient_matches_float64():
    """The default path (this process's flags) keeps float32 accuracy: measured 8.6e-6 of the
    largest gradient with the YNNPACK flag, 7.8e-6 without. tanh keeps ReLU's kink, where
    float32 noise can pick the other side, out of the comparison."""
    model = models.create("resnet20", num_classes=10, normalization="batch", activation="tanh")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 16, 16, 3))
    labels = jax.nn.one_hot(rng.integers(0, 10, 32), 10)
    variables = init_variables(model, input_shape=x.shape[1:], seed=0)  # one compilation

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
        "from cnnjax import fast_paths\n"
        f"assert fast_paths.enable_compilation_cache({str(cache)!r})\n"
        "jax.jit(lambda x: jnp.tanh(x) + 1)(jnp.ones(3))\n"  # kept however fast it compiles
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_COMPILATION_CACHE"}
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, env=env)
    assert any(entry.name.startswith("jit_") for entry in cache.iterdir())
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    assert not fast_paths.enable_compilation_cache(str(blocked / "cache"))
    assert "compilation cache off" in capsys.readouterr().err
