"""Finite-difference checks of the training loss's gradient, in float64, for any model.

    cnnjax gradcheck --config=configs/lenet5_fashion_mnist.py   # prints a table; exit 1 on failure

`check_gradients` compares the reverse-mode gradient of exactly the loss that `train_step`
differentiates (`steps.training_loss`: cross-entropy plus 0.3 x any auxiliary heads, batch norm
in training mode, dropout) with finite differences of that loss, along random unit directions in
the whole parameter space and along single parameters sampled across the layers.

Why a pass can be trusted:
* Everything runs in float64 (a local `jax.enable_x64` context): parameters, batch statistics,
  images and every operation of the forward and backward passes. The traced program is searched
  for operations that still compute in a narrower float (a layer with a hard-coded dtype); any
  found are named in the report and fail the check, since their rounding would swamp it.
* The loss is one deterministic function: a fixed dropout key (the same mask at every
  evaluation), batch norm on batch statistics with the updates discarded.
* Error budget: a central difference errs by O(epsilon^2) (truncation) plus about
  1e-15 |L| / epsilon (the loss's round-off); at epsilon = 1e-5 both come to 1e-10 to 1e-9 for
  a loss near 3, so correct gradients measure relative errors of 1e-11 to 1e-6 (1e-5 at worst,
  with batch norm over a handful of values or gradients vanishing through 48 layers), while a
  wrong one (a factor, a sign, a missing term) gives 1e-2 or more: the tolerance 1e-4 sits
  10x from each. The relative error is |analytic - numeric| / max(|analytic|, |numeric|,
  floor), the floor being 1e-10 |L| / epsilon (3e-5 for a loss near 3), 1e5 x the round-off:
  smaller derivatives, which finite differences cannot resolve to the tolerance, are compared
  absolutely (a bias followed by batch norm has a gradient of exactly 0, plus round-off).
* Kinks: ReLU and max pooling make the loss only piecewise smooth. Zero biases put whole
  channels exactly on a ReLU kink (dead inputs give a pre-activation of exactly 0), so the check
  runs at the given parameters plus a little noise (`jitter`), where kinks lie at generic
  places. A difference that still straddles one mixes two slopes; so does strong curvature.
  When the central difference misses, the one extrapolated from steps h and 2h (error O(h^4))
  and the second-order one-sided differences are formed, at steps epsilon x 10, / 10 and / 100
  too, and the closest estimate is kept and named in the table: a kink spoils at most one side,
  while a wrong gradient misses every estimate, since away from kinks all of them approximate
  the same derivative. To fail a correct gradient, kinks would have to lie within 2 steps on
  both sides of the point at every step size.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from cnnjax.data.inputs import make_input
from cnnjax.errors import UserError
from cnnjax.models.layers import with_plain_forms
from cnnjax.train import steps
from cnnjax.train.config_checks import validate_config
from cnnjax.train.loop import build_model
from cnnjax.train.state import count_params, create_train_state

# See the module docstring for the error budget behind these.
EPSILON = 1e-5  # step of the finite differences along unit directions
TOLERANCE = 1e-4  # largest relative error accepted
ROUNDOFF_FLOOR = 1e-10  # the relative error's floor: this x max(|loss|, 1) / epsilon
JITTER = 1e-3  # noise added to the parameters, relative to each array's RMS (1 if all zero)
NARROW_FLOATS = {jnp.dtype(t).name for t in (jnp.float32, jnp.float16, jnp.bfloat16)}


@dataclasses.dataclass(frozen=True)
class GradCheckRow:
    """One comparison: `analytic` (reverse mode) against `numeric` (finite differences)."""

    kind: str  # "direction" or "coordinate"
    name: str  # "random direction 0", or a parameter path and index
    analytic: float
    numeric: float
    relative_error: float
    step: float  # of the finite differences that `numeric` comes from
    stencil: str  # central; extrapolated (curvature); left or right (a kink on the other side)


@dataclasses.dataclass(frozen=True)
class GradCheckResult:
    """The comparisons of one gradient check, and whether they all passed."""

    rows: tuple[GradCheckRow, ...]
    tolerance: float
    epsilon: float
    loss: float
    floor: float  # derivatives below this are compared absolutely (see `relative_error`)
    narrow_ops: tuple[str, ...] = ()  # source lines computing below float64, and their ops

    @property
    def max_relative_error(self) -> float:
        return max((row.relative_error for row in self.rows), default=0.0)

    @property
    def passed(self) -> bool:
        return not self.narrow_ops and self.max_relative_error <= self.tolerance

    def format(self) -> str:
        """A readable table: one line per comparison, failing ones marked, then the verdict."""
        lines = [
            f"loss {self.loss:.6f} in float64; finite differences with epsilon {self.epsilon:g}; "
            f"relative error |a - n| / max(|a|, |n|, {self.floor:.1e})",
            f"{'kind':<10}  {'name':<48}  {'analytic':>14}  {'numeric':>14}  "
            f"{'rel. error':>10}  {'step':>5}  stencil",
        ]
        for row in self.rows:
            mark = "  FAIL" if row.relative_error > self.tolerance else ""
            lines.append(
                f"{row.kind:<10}  {row.name:<48}  {row.analytic:>14.6e}  {row.numeric:>14.6e}  "
                f"{row.relative_error:>10.2e}  {row.step:>5.0e}  {row.stencil}{mark}"
            )
        if self.narrow_ops:
            lines.append(
                f"{len(self.narrow_ops)} place(s) compute below float64, so the check cannot "
                "resolve the gradient (compute there in the dtype of the inputs):"
            )
            lines += [f"  {op}" for op in self.narrow_ops]
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append(
            f"gradient check {verdict}: max relative error {self.max_relative_error:.2e} "
            f"(tolerance {self.tolerance:g}) over {len(self.rows)} comparisons"
        )
        return "\n".join(lines)


def relative_error(analytic: float, numeric: float, floor: float = 1e-30) -> float:
    """|analytic - numeric| / max(|analytic|, |numeric|, floor): 0 when both are exactly 0."""
    return abs(analytic - numeric) / max(abs(analytic), abs(numeric), floor)


def narrow_float_ops(jaxpr: jex.core.Jaxpr) -> list[str]:
    """'file:line (function): primitive dtype, ...' for each source line whose operations in
    `jaxpr`, or in the programs nested in it, give floats narrower than float64."""
    found: dict[str, list[str]] = {}
    _collect_narrow(jaxpr, found)
    return [f"{place}: {', '.join(ops)}" for place, ops in found.items()]


def _collect_narrow(jaxpr: jex.core.Jaxpr, found: dict[str, list[str]]) -> None:
    for eqn in jaxpr.eqns:
        narrow = sorted({str(v.aval.dtype) for v in eqn.outvars} & NARROW_FLOATS)
        if narrow:
            frames = jex.source_info_util.summarize(eqn.source_info, num_frames=30).splitlines()
            # The innermost frame of neither an installed package nor this file (whose Flax
            # interceptor wraps every module call) is the model's own line.
            own = [f for f in frames if "site-packages" not in f and __file__ not in f]
            op = f"{eqn.primitive.name} {'/'.join(narrow)}"
            ops = found.setdefault(own[-1] if own else "unknown place", [])
            if op not in ops:
                ops.append(op)
        for inner in jex.core.jaxprs_in_params(eqn.params):
            _collect_narrow(inner, found)


def _to_float64(tree):
    """Host copies of `tree` with floating leaves in float64 (numpy: no per-shape compiles)."""
    return jax.tree.map(
        lambda x: np.asarray(x, np.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        tree,
    )


def _jittered(flat: dict, scale: float, rng: np.random.Generator) -> dict:
    """`flat` plus Gaussian noise of `scale` x each array's RMS (x 1 for all-zero arrays)."""
    noisy = {}
    for path, x in flat.items():
        rms = float(np.sqrt(np.mean(x**2))) or 1.0
        noisy[path] = x + scale * rms * rng.standard_normal(x.shape)
    return noisy


def _float64_loss(model, variables: dict, batch: dict, dropout_key, options: steps.StepOptions):
    """The training loss as a function of the flattened parameters {path: array}, in float64
    with the batch statistics, the batch and the dropout key fixed. Call within x64."""
    loss_fn = functools.partial(
        steps.training_loss,
        batch_stats=_to_float64(variables.get("batch_stats", {})),
        apply_fn=model.apply,
        batch={"image": _to_float64(batch["image"]), "label": batch["label"]},
        dropout_key=dropout_key,
        options=options,
    )
    return lambda flat: loss_fn(traverse_util.unflatten_dict(flat))[0]


def _reference_model(model: nn.Module) -> nn.Module:
    """`model` as the check differentiates it. Its plain forms: the model's own operations,
    the reference its fast forms are tested against (tests/test_fast_paths.py), since XLA:CPU
    once miscompiled a float64 gradient through reshape pooling
    (benchmarks/results/fast_paths.json). And no mesh axis for batch statistics: the whole
    batch is on this one device, outside any mapped step."""
    model = with_plain_forms(model)
    options = getattr(model, "layer_options", None)
    if options is None or options.batch_norm_axis is None:
        return model
    return model.clone(layer_options=dataclasses.replace(options, batch_norm_axis=None))


def _recorder(calls: list):
    """A Flax interceptor appending the path of each module called (a forward pass's order)."""

    def record(next_fun, args, kwargs, context):
        calls.append(context.module.path)
        return next_fun(*args, **kwargs)

    return nn.intercept_methods(record)


def _compile_on_line(loss_of_flat, flat: dict):
    """(on_line, narrow ops, parameter paths from the first layer to the last).

    `on_line(direction, t)` -> (loss, gradient) at flat + t x direction: one compiled program
    gives the gradient at the point and the loss anywhere on a line through it (a second,
    loss-only program would cost more to compile than it saves). Call within x64.
    """
    calls = []
    with _recorder(calls):
        traced = jax.jit(
            lambda p, d, t: jax.value_and_grad(loss_of_flat)(
                jax.tree.map(lambda x, y: x + t * y, p, d)
            )
        ).trace(flat, flat, np.float64(0))
    first_call = {}
    for i, module in enumerate(calls):
        first_call.setdefault(module, i)
    # Parameter dicts come back from jit sorted by name, which says nothing about depth.
    order = sorted(flat, key=lambda path: first_call.get(path[:-1], len(first_call)))
    compiled = traced.lower().compile()
    params = jax.device_put(flat)
    on_line = lambda d, t: compiled(params, d, np.float64(t))  # noqa: E731
    return on_line, narrow_float_ops(traced.jaxpr.jaxpr), order


def _differences(loss_at, direction, step: float, loss0: float, accept) -> dict[str, float]:
    """{stencil: derivative estimate} at `step`: the central difference, and unless `accept`s
    it, the extrapolation from steps h and 2h and the second-order one-sided differences."""
    plus, minus = loss_at(direction, step), loss_at(direction, -step)
    estimates = {"central": (plus - minus) / (2 * step)}
    if not accept(estimates["central"]):
        plus2, minus2 = loss_at(direction, 2 * step), loss_at(direction, -2 * step)
        estimates["extrapolated"] = (8 * (plus - minus) - (plus2 - minus2)) / (12 * step)
        estimates["right"] = (-3 * loss0 + 4 * plus - plus2) / (2 * step)
        estimates["left"] = (3 * loss0 - 4 * minus + minus2) / (2 * step)
    return estimates


def _compare(kind, name, analytic, direction, *, loss_at, loss0, epsilon, tolerance, floor):
    """The row comparing `analytic` with the derivative of the loss along `direction`: the
    closest estimate over steps epsilon, x 10, / 10 and / 100, stopping at the first within
    a hundredth of `tolerance` (most rows: one central difference, two evaluations)."""
    best = None
    error = functools.partial(relative_error, analytic, floor=floor)
    accept = lambda numeric: error(numeric) <= tolerance / 100  # noqa: E731
    for step in (epsilon, 10 * epsilon, epsilon / 10, epsilon / 100):
        for stencil, numeric in _differences(loss_at, direction, step, loss0, accept).items():
            if best is None or error(numeric) < best.relative_error:
                best = GradCheckRow(kind, name, analytic, numeric, error(numeric), step, stencil)
        if accept(best.numeric):
            break
    return best


def _directions(flat: dict, count: int, rng: np.random.Generator):
    """(name, direction) for `count` random unit directions over all parameters."""
    for i in range(count):
        d = {path: rng.standard_normal(x.shape) for path, x in flat.items()}
        norm = np.sqrt(sum(np.sum(x**2) for x in d.values()))
        yield f"random direction {i}", {path: x / norm for path, x in d.items()}


def _coordinates(grads: dict, order: list[tuple], count: int, rng: np.random.Generator):
    """(name, path, index, unit direction) of `count` single parameters: in the first array of
    the first layer, in the last of the last layer, then in arrays drawn at random; within an
    array, an entry of at least a tenth of its largest |gradient|, so that the compared values
    stand well above round-off."""
    picks = [order[0], order[-1]][:count]
    middle, extra = order[1:-1] or order, count - len(picks)
    if extra > 0:
        drawn = rng.choice(len(middle), extra, replace=extra > len(middle))
        picks += [middle[i] for i in sorted(drawn)]
    for path in picks:
        magnitude = np.abs(grads[path])
        candidates = np.flatnonzero(magnitude >= 0.1 * magnitude.max())
        index = np.unravel_index(rng.choice(candidates), magnitude.shape)
        direction = {p: np.zeros_like(g) for p, g in grads.items()}
        direction[path][index] = 1.0
        yield f"{'/'.join(path)}[{','.join(str(int(i)) for i in index)}]", path, index, direction


def check_gradients(
    model: nn.Module,
    variables: dict,
    batch: dict,
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
    seed: int = 0,
    num_directions: int = 4,
    num_coordinates: int = 8,
    epsilon: float = EPSILON,
    tolerance: float = TOLERANCE,
    jitter: float = JITTER,
) -> GradCheckResult:
    """Checks the gradient of `model`'s training loss on `batch` by finite differences.

    `variables`: {'params': ..., 'batch_stats': ... (if any)}; `batch`: {'image': [B, ...],
    'label': [B] or [B, H, W]}. Compares `num_directions` derivatives along random unit
    directions in the whole parameter space, then `num_coordinates` partial derivatives (the
    first and the last layer's among them). `seed` fixes the dropout mask, the jitter, the
    directions and the coordinates. Runs in float64 without changing the caller's arrays or
    JAX's global precision setting.
    """
    rng = np.random.default_rng(seed)
    flat = _to_float64(traverse_util.flatten_dict(variables["params"]))  # {(module, name): x}
    if jitter:
        flat = _jittered(flat, jitter, rng)
    with jax.enable_x64(True):
        loss_of_flat = _float64_loss(
            _reference_model(model),
            variables,
            batch,
            jax.random.key(seed),
            steps.StepOptions(num_classes=num_classes, label_smoothing=label_smoothing),
        )
        on_line, narrow, order = _compile_on_line(loss_of_flat, flat)
        loss, grads = on_line({path: np.zeros_like(x) for path, x in flat.items()}, 0.0)
        if loss.dtype != jnp.float64:
            narrow.append(f"the loss itself is {loss.dtype}")
        grads = {path: np.asarray(g) for path, g in grads.items()}
        floor = ROUNDOFF_FLOOR * max(abs(float(loss)), 1.0) / epsilon
        compare = functools.partial(
            _compare,
            loss_at=lambda d, t: float(on_line(d, t)[0]),
            loss0=float(loss),
            epsilon=epsilon,
            tolerance=tolerance,
            floor=floor,
        )
        rows = [
            compare("direction", name, float(sum(np.vdot(grads[p], d[p]) for p in grads)), d)
            for name, d in _directions(flat, num_directions, rng)
        ] + [
            compare("coordinate", name, float(grads[path][index]), d)
            for name, path, index, d in _coordinates(grads, order, num_coordinates, rng)
        ]
    return GradCheckResult(tuple(rows), tolerance, epsilon, float(loss), floor, tuple(narrow))


def gradcheck_from_config(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int = 4,
    num_directions: int = 4,
    num_coordinates: int = 8,
    epsilon: float = EPSILON,
    tolerance: float = TOLERANCE,
) -> tuple[str, bool]:
    """Checks the gradient of a recipe's model at its initialization: (report, passed).

    The model is built and initialized exactly as `cnnjax train` does (`config.seed`), and
    the loss is taken on the first `batch_size` training examples (augmented as in training),
    with the recipe's label smoothing. This is what `cnnjax gradcheck --config=FILE` prints.
    """
    if batch_size < 1:
        raise UserError(f"the gradient check needs a batch of 1 or more (got {batch_size})")
    validate_config(config)
    config = config.copy_and_resolve_references()
    config.data.batch_size = batch_size
    run_input = make_input(config)
    batch = next(iter(run_input.train_batches(0)))
    model = build_model(config, run_input.num_classes)
    state = create_train_state(
        model, optax.identity(), input_shape=run_input.input_shape, seed=config.seed
    )
    result = check_gradients(
        model,
        {"params": state.params, "batch_stats": state.batch_stats},
        # Normalized on the host as the steps normalize on the device.
        {"image": np.asarray(run_input.normalization(batch["image"])), "label": batch["label"]},
        num_classes=run_input.num_classes,
        label_smoothing=config.optimizer.label_smoothing,
        seed=config.seed,
        num_directions=num_directions,
        num_coordinates=num_coordinates,
        epsilon=epsilon,
        tolerance=tolerance,
    )
    header = (
        f"gradient check of {config.model.name} ({count_params(state.params):,} parameters) "
        f"at its initialization (seed {config.seed}), on {batch_size} training examples of "
        f"{config.data.name}"
    )
    return f"{header}\n{result.format()}", result.passed
