"""`position_groups`: output positions that share a kernel.

The reference is the definition: a grouped call equals the NumPy reference
of an ungrouped one whose kernel holds, at every output position, its
group's kernel (`expected_groups` computes the groups from the issue's
wording, independently of the package). One group must equal Keras' own
`Conv*D`, one group per position in row-major order today's layer.
"""

import itertools
import math

import keras
import numpy as np
import pytest

from keras_localconn import _local_conv, from_conv, ops, to_conv, untie
from keras_localconn._schedule import Formulation
from keras_localconn.ops import local_conv
from tests.autodiff import gradients, to_numpy
from tests.helpers import (
    CONV_LAYER_CASES,
    FORWARD_CASES,
    LOCALLY_CONNECTED,
    LOCALLY_CONNECTED_TRANSPOSE,
    PADDING_CASES,
    assert_gradients_equal_directional_derivatives,
    batch_shape,
    conv_inputs,
    conv_layer_case_id,
    conv_outputs,
    formulation_id,
    forward_case_id,
    int8_encoded,
    padding_case_id,
    random_array,
    trained_looking_conv,
)
from tests.reference import reference_local_conv, reference_output_shape

RTOL = ATOL = 2e-5
TOL = dict(rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------
# The groups, from the definition
# --------------------------------------------------------------------------


def expected_groups(position_groups, out):
    """``(P,)`` the group of every output position (row-major), and T.

    A block shape: blocks of that many positions per axis, numbered in
    row-major order of the block grid; a map: its values.
    """
    if isinstance(position_groups, np.ndarray):
        return position_groups.reshape(-1), int(position_groups.max()) + 1
    if isinstance(position_groups, int):
        position_groups = (position_groups,) * len(out)
    grid = [math.ceil(n / b) for n, b in zip(out, position_groups)]
    ids = []
    for position in itertools.product(*map(range, out)):
        group = 0
        for index, block, count in zip(position, position_groups, grid):
            group = group * count + index // block
        ids.append(group)
    return np.array(ids), math.prod(grid)


def _tiles(out):
    """Tiled convolution: positions a period of 2 apart share a kernel."""
    periods = [min(2, n) for n in out]
    phases = np.indices(out) % np.reshape(periods, (-1,) + (1,) * len(out))
    return np.ravel_multi_index(tuple(phases), periods)


def _mirror(out):
    """A face's halves: positions mirror-symmetric in the last axis share one."""
    last = np.arange(out[-1])
    half = np.minimum(last, out[-1] - 1 - last)
    return np.broadcast_to(half, out).copy()


FORMS = {
    "block2": lambda out: 2,
    "blocks": lambda out: (3, *[1] * (len(out) - 1)),
    "tiles": _tiles,
    "mirror": _mirror,
    "one": lambda out: tuple(out),
    "each": lambda out: np.arange(math.prod(out)).reshape(out),
}


def _problem(case, form, data_format, seed=0):
    """x, a grouped kernel (T, K, 4), a bias (T, 4), the groups and out."""
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    out = reference_output_shape(spatial, kernel_size, strides, dilation, padding)
    position_groups = FORMS[form](out)
    groups, count = expected_groups(position_groups, out)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=batch_shape(batch, spatial, channels, data_format))
    kernel = rng.normal(size=(count, math.prod(kernel_size) * channels, 4))
    bias = rng.normal(size=(count, 4))
    return (
        x.astype("float32"),
        kernel.astype("float32"),
        bias.astype("float32"),
        position_groups,
        groups,
        out,
    )


def _reference(x, kernel, bias, groups, out, case, data_format):
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    y = reference_local_conv(
        x, kernel[groups], kernel_size, strides, dilation, padding, data_format
    )
    if bias is None:
        return y
    per_position = bias[groups].reshape(*out, -1)
    if data_format == "channels_first":
        per_position = np.moveaxis(per_position, -1, 0)
    return y + per_position


def _run(x, kernel, case, data_format, position_groups, bias=None, formulation=None):
    """The engine on `case`; with a `formulation`, every choice of it pinned
    (a `scatter_add` of None: the one this Keras has)."""
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    choices = {} if formulation is None else formulation._asdict()
    with ops.formulation(**choices):
        return _local_conv.local_conv(
            x,
            kernel,
            kernel_size,
            strides=strides,
            padding=padding,
            dilation_rate=dilation,
            data_format=data_format,
            bias=bias,
            position_groups=position_groups,
        )


# Named padding (FORWARD_CASES), and circular and explicit padding
# (PADDING_CASES, as the user writes it; the reference takes pairs), with a
# batch of 2.
CASES = FORWARD_CASES[::4] + FORWARD_CASES[-4:]
CASE_IDS = [forward_case_id(case) for case in CASES]
for _case in PADDING_CASES[::3]:
    *_geometry, _written, _reference_padding = _case
    CASES.append((*_geometry, _written, 2))
    CASE_IDS.append(padding_case_id(_case))


def _reference_case(case):
    """`case` with its padding as the reference takes it."""
    for padding_case in PADDING_CASES:
        if tuple(padding_case[:6]) == tuple(case[:6]):
            return (*case[:5], padding_case[6], case[6])
    return case


# --------------------------------------------------------------------------
# The engine against the reference
# --------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_form_equals_the_reference_with_its_groups_kernels(case, form):
    # Both data formats, case by case, every form in each.
    data_format = ("channels_last", "channels_first")[CASES.index(case) % 2]
    reference_case = _reference_case(case)
    x, kernel, bias, position_groups, groups, out = _problem(
        reference_case, form, data_format
    )
    y = _run(x, kernel, case, data_format, position_groups, bias=bias)
    expected = _reference(x, kernel, bias, groups, out, reference_case, data_format)
    assert tuple(y.shape) == expected.shape
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


# Every layout, both loops, chunks that overlap (3 units), the backward
# pass's groups of chunks, both ways of adding input gradients, one
# group computed as a grouped matmul instead of `keras.ops.conv`, and the
# per-tap formulation.
FORMULATIONS = [
    Formulation(None, False, True),
    Formulation(None, True, True, conv=False),
    Formulation(1, False, True, None, False),
    Formulation(3, True, True, 2),
    Formulation(1, True, False, 1, False),
    Formulation(3, False, False, 1, conv=False),
    Formulation(conv=False, taps=True),
]
GRADIENT_CASES = [FORWARD_CASES[1], FORWARD_CASES[21], FORWARD_CASES[31]]


@pytest.mark.parametrize("formulation", FORMULATIONS, ids=formulation_id)
@pytest.mark.parametrize("form", ["blocks", "tiles", "one"])
@pytest.mark.parametrize("case", GRADIENT_CASES, ids=forward_case_id)
def test_every_formulation_of_a_grouped_call_equals_the_reference(
    case, form, formulation
):
    data_format = "channels_first" if form == "tiles" else "channels_last"
    x, kernel, bias, position_groups, groups, out = _problem(case, form, data_format)
    y = _run(x, kernel, case, data_format, position_groups, bias, formulation)
    expected = _reference(x, kernel, bias, groups, out, case, data_format)
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.training
@pytest.mark.parametrize("formulation", FORMULATIONS, ids=formulation_id)
@pytest.mark.parametrize("form", ["blocks", "tiles", "one"])
@pytest.mark.parametrize("case", GRADIENT_CASES, ids=forward_case_id)
def test_every_formulation_of_a_grouped_call_has_the_reference_gradients(
    case, form, formulation
):
    """Directional derivatives, as in test_ops: the kernel's gradient sums
    over the positions of each group."""
    data_format = "channels_first" if form == "tiles" else "channels_last"
    x, kernel, _, position_groups, groups, out = _problem(case, form, data_format)
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    rng = np.random.default_rng(11)
    ref = dict(
        kernel_size=kernel_size,
        strides=strides,
        dilation=dilation,
        padding=padding,
        data_format=data_format,
    )

    def grouped_reference(inputs, weights, **ref):
        return reference_local_conv(inputs, weights[groups], **ref)

    cotangent = rng.normal(size=grouped_reference(x, kernel, **ref).shape)
    cotangent = cotangent.astype("float32")

    def loss(inputs, weights):
        outputs = _run(
            inputs, weights, case, data_format, position_groups, None, formulation
        )
        return keras.ops.sum(outputs * keras.ops.convert_to_tensor(cotangent))

    grads = gradients(loss, x, kernel)
    assert_gradients_equal_directional_derivatives(
        grads, x, kernel, cotangent, grouped_reference, ref, rng
    )


@pytest.mark.parametrize("column_scale", [False, True], ids=["decoded", "column"])
@pytest.mark.parametrize("formulation", FORMULATIONS[2:4], ids=formulation_id)
def test_an_encoded_grouped_kernel_is_decoded_unit_by_unit(formulation, column_scale):
    """An encoded kernel (int8 values and a scale per group and filter,
    applied to the kernel or to the outputs) is taken per unit in its
    encoded form and decoded chunk by chunk."""
    case = FORWARD_CASES[21]
    x, kernel, _, position_groups, groups, out = _problem(
        case, "mirror", "channels_last"
    )
    encoded, decoded = int8_encoded(kernel, column_scale)  # (T, K, F)
    y = _run(x, encoded, case, "channels_last", position_groups, None, formulation)
    expected = _reference(x, decoded, None, groups, out, case, "channels_last")
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


def test_a_symbolic_call_has_the_output_shape_and_runs_in_a_model():
    inputs = keras.Input((8, 7, 2))
    kernel = keras.Input((2, 3 * 3 * 2, 5), batch_size=None)
    # The kernel is a model input here only to make the call symbolic.
    outputs = local_conv(inputs, kernel[0], 3, position_groups=(3, 5))
    assert tuple(outputs.shape) == (None, 6, 5, 5)
    model = keras.Model([inputs, kernel], outputs)
    x = random_array((1, 8, 7, 2))
    weights = random_array((1, 2, 18, 5), seed=2)
    expected = reference_local_conv(
        x,
        weights[0][np.repeat([0, 1], 15)],
        (3, 3),
        (1, 1),
        (1, 1),
        "valid",
        "channels_last",
    )
    y = model.predict([x, weights], verbose=0)
    np.testing.assert_allclose(y, expected, **TOL)


# --------------------------------------------------------------------------
# Layers: the ends of the range, and in between
# --------------------------------------------------------------------------

# Every padding mode Conv shares with these layers, strides and dilation, in
# each rank.
CONV_CASES = [CONV_LAYER_CASES[i] for i in (0, 1, 2, 5, 6, 7, 10, 11)]


def _conv_and_inputs(case, data_format):
    return (
        trained_looking_conv(case, data_format, activation="tanh"),
        conv_inputs(case, data_format),
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CONV_CASES, ids=conv_layer_case_id)
def test_one_group_is_the_convolution(case, data_format):
    """One group holds the convolution's kernel, in the patch layout (K
    ordered offsets then channel, or channel then offsets): the same outputs
    as Keras' Conv*D, whichever way the block covers the output."""
    conv, x = _conv_and_inputs(case, data_format)
    kernel, bias = conv.get_weights()
    if data_format == "channels_first":
        kernel = np.moveaxis(kernel, -2, 0)
    spatial, channels, kernel_size, strides, dilation, padding = case
    rank = len(spatial)
    layer = LOCALLY_CONNECTED[rank](
        3,
        kernel_size,
        strides=strides,
        padding=padding,
        dilation_rate=dilation,
        data_format=data_format,
        activation="tanh",
        position_groups=(10**6,) * rank,
    )
    layer.build(x.shape)
    assert tuple(layer.kernel.shape)[0] == 1 and tuple(layer.bias.shape) == (1, 3)
    layer.set_weights([kernel.reshape(1, -1, 3), bias.reshape(1, 3)])
    np.testing.assert_allclose(to_numpy(layer(x)), conv_outputs(conv, x), **TOL)


@pytest.mark.parametrize("form", ["block2", "tiles"])
@pytest.mark.parametrize("case", CONV_CASES[2::3], ids=conv_layer_case_id)
def test_from_conv_starts_every_group_from_the_convolution(case, form):
    conv, x = _conv_and_inputs(case, "channels_last")
    out = conv.compute_output_shape(x.shape)[1:-1]
    position_groups = FORMS[form](out)
    local = from_conv(conv, position_groups=position_groups)
    _, count = expected_groups(position_groups, out)
    assert local.kernel.shape[0] == count
    np.testing.assert_allclose(to_numpy(local(x)), conv_outputs(conv, x), **TOL)
    # And back: every group holds the convolution's kernel.
    back = to_conv(local)
    for restored, original in zip(back.get_weights(), conv.get_weights()):
        np.testing.assert_allclose(restored, original, rtol=1e-5, atol=1e-6)


def test_to_conv_weighs_each_group_by_its_positions():
    """The least-squares convolution over positions: a group of 4 positions
    counts 4 times, one of 2 twice."""
    local = LOCALLY_CONNECTED[1](2, 3, position_groups=4)  # 6 outputs: 4 + 2
    local.build((None, 8, 1))
    kernel = np.stack([np.ones((3, 2)), 4 * np.ones((3, 2))]).astype("float32")
    local.set_weights([kernel, np.array([[0, 0], [3, 3]], "float32")])
    conv = to_conv(local)
    np.testing.assert_allclose(to_numpy(conv.kernel), np.full((3, 1, 2), 2.0))
    np.testing.assert_allclose(to_numpy(conv.bias), [1.0, 1.0])


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_untie_gives_every_position_its_groups_kernel(rank, data_format):
    spatial = (7, 6, 5)[:rank]
    layer = LOCALLY_CONNECTED[rank](
        3,
        2,
        data_format=data_format,
        position_groups=2,
        bias_initializer="random_normal",
        name="grouped",
    )
    x = random_array(batch_shape(2, spatial, 2, data_format))
    y = to_numpy(layer(x))
    untied = untie(layer)
    assert untied.name == "grouped" and untied.position_groups is None
    out = tuple(n - 1 for n in spatial)
    groups, _ = expected_groups(2, out)
    np.testing.assert_allclose(to_numpy(untied.kernel), to_numpy(layer.kernel)[groups])
    assert tuple(untied.bias.shape) == (*out, 3)
    np.testing.assert_allclose(to_numpy(untied(x)), y, **TOL)


def test_one_group_per_position_in_row_major_order_is_todays_layer():
    x = random_array((2, 7, 6, 3))
    plain = LOCALLY_CONNECTED[2](4, 3, padding="same", name="plain")
    y = to_numpy(plain(x))
    each = LOCALLY_CONNECTED[2](
        4, 3, padding="same", position_groups=np.arange(42).reshape(7, 6)
    )
    each.build(x.shape)
    kernel, bias = plain.get_weights()
    each.set_weights([kernel, bias.reshape(42, 4)])
    np.testing.assert_allclose(to_numpy(each(x)), y, **TOL)
    # A block of one position is the same layer.
    ones = LOCALLY_CONNECTED[2](4, 3, padding="same", position_groups=1)
    ones.build(x.shape)
    ones.set_weights([kernel, bias.reshape(42, 4)])
    np.testing.assert_allclose(to_numpy(ones(x)), y, **TOL)


def test_a_groups_kernel_starts_as_a_convolution_kernel_would():
    """Variance-scaling initializers count fans per group (K, filters)."""
    layer = LOCALLY_CONNECTED[2](
        16, 3, position_groups=4, kernel_initializer=keras.initializers.GlorotUniform(0)
    )
    layer.build((None, 18, 18, 8))  # 16x16 outputs, 16 groups
    kernel = to_numpy(layer.kernel)
    limit = math.sqrt(6 / (9 * 8 + 16))
    assert kernel.shape == (16, 72, 16)
    assert limit * 0.95 < np.abs(kernel).max() <= limit


@pytest.mark.training
def test_a_grouped_layer_trains_its_groups_kernels():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            LOCALLY_CONNECTED[2](4, 3, position_groups=(3, 3), activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    x = random_array((16, 8, 8, 1))
    y = x.reshape(16, -1).mean(axis=1, keepdims=True)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    before = to_numpy(model.layers[0].kernel)
    history = model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert not np.allclose(to_numpy(model.layers[0].kernel), before)


# --------------------------------------------------------------------------
# Configuration, saving, Keras' layer contract
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position_groups", "stored"),
    [
        (None, None),
        (2, [2, 2]),
        ((3, 2), [3, 2]),
        ([[0, 1, 0], [1, 0, 1]], [[0, 1, 0], [1, 0, 1]]),
        (np.array([[0, 0, 1], [2, 2, 1]], dtype="int32"), [[0, 0, 1], [2, 2, 1]]),
    ],
)
def test_config_holds_the_groups_as_lists(position_groups, stored):
    layer = LOCALLY_CONNECTED[2](3, 2, position_groups=position_groups)
    config = layer.get_config()
    assert config["position_groups"] == stored
    rebuilt = LOCALLY_CONNECTED[2].from_config(config)
    assert rebuilt.get_config() == config


@pytest.mark.parametrize("form", ["blocks", "mirror"])
def test_a_grouped_model_saves_and_loads_with_its_predictions(tmp_path, form):
    out = (5, 4)
    model = keras.Sequential(
        [
            keras.Input((6, 5, 2)),
            LOCALLY_CONNECTED[2](
                3,
                2,
                position_groups=FORMS[form](out),
                bias_initializer="random_normal",
                name="grouped",
            ),
        ]
    )
    x = random_array((2, 6, 5, 2))
    expected = model.predict(x, verbose=0)
    path = tmp_path / "grouped.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.get_layer("grouped")
    assert layer.kernel.shape == model.get_layer("grouped").kernel.shape
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, **TOL)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position_groups", "message"),
    [
        (0, r"position_groups.*positive"),
        ((2, -1), r"position_groups.*positive"),
        ((2, 2, 2), r"position_groups.*must have 2 element"),
        (2.5, r"position_groups.*Received: position_groups=2.5"),
        ([[0.0, 1.0]], r"integer array.*float"),
        ([[True, False]], r"integer array.*bool"),
        ([[0, 1], [0]], r"block shape.*integer array"),
        ("blocks", r"position_groups"),
        ([[[0]]], r"map must have one value per output position.*shape \(1, 1, 1\)"),
    ],
)
def test_bad_position_groups_are_refused_when_the_layer_is_made(
    position_groups, message
):
    with pytest.raises(ValueError, match=r"LocallyConnected2D '\w+'"):
        LOCALLY_CONNECTED[2](3, 2, position_groups=position_groups)
    with pytest.raises(ValueError, match=message):
        LOCALLY_CONNECTED[2](3, 2, position_groups=position_groups)


@pytest.mark.parametrize(
    ("position_groups", "message"),
    [
        (np.zeros((3, 3), "int32"), r"output spatial shape \(4, 4\).*\(3, 3\)"),
        (np.full((4, 4), 1), r"0 \.\. T-1.*from 1 to 1, with \[0\] unused"),
        (np.arange(16).reshape(4, 4) * 2, r"0 \.\. T-1.*\[1, 3, 5, 7, 9\] unused"),
        (np.arange(16).reshape(4, 4) - 1, r"0 \.\. T-1.*from -1 to 14"),
    ],
)
def test_a_map_that_does_not_fit_the_output_is_refused_at_build(
    position_groups, message
):
    layer = LOCALLY_CONNECTED[2](3, 2, position_groups=position_groups, name="lc")
    with pytest.raises(ValueError, match=r"LocallyConnected2D 'lc'.*" + message):
        layer.build((None, 5, 5, 1))
    assert not layer.weights


def test_a_kernel_that_does_not_fit_the_groups_is_refused():
    x = random_array((1, 6, 2))
    with pytest.raises(ValueError, match=r"\(T, K, filters\) = \(2, 6, filters\)"):
        local_conv(x, random_array((4, 6, 3)), 3, position_groups=2)
    with pytest.raises(ValueError, match=r"T = 2 position groups"):
        local_conv(x, random_array((4, 6, 3)), 3, position_groups=[0, 0, 1, 1])


def test_the_transposed_layers_take_no_groups():
    with pytest.raises(ValueError, match="Unrecognized.*position_groups"):
        LOCALLY_CONNECTED_TRANSPOSE[2](2, 2, position_groups=2)


class _ShapeRecorder:
    """`keras.ops` as the engine sees it, recording the size of every tensor
    its functions return."""

    def __init__(self, module):
        self._module, self.sizes = module, []

    def __getattr__(self, name):
        function = getattr(self._module, name)
        if not callable(function):
            return function

        def recorded(*args, **kwargs):
            result = function(*args, **kwargs)
            shape = getattr(result, "shape", None)
            if shape is not None and all(isinstance(n, int) for n in shape):
                self.sizes.append(math.prod(shape))
            return result

        return recorded


@pytest.mark.parametrize("formulation", FORMULATIONS[:4], ids=formulation_id)
def test_no_kernel_is_expanded_to_one_per_position(monkeypatch, formulation):
    """Forward and backward read the groups' kernels: no tensor the engine
    makes is as large as a kernel per position (P * K * filters)."""
    recorder = _ShapeRecorder(keras.ops)
    monkeypatch.setattr(_local_conv, "ops", recorder)
    x = random_array((1, 12, 12, 3))  # 10x10 positions, K = 27
    kernel = random_array((25, 27, 8), seed=2)  # blocks of 2x2: T = 25
    expanded = 100 * 27 * 8

    def loss(inputs, weights):
        outputs = local_conv_with(inputs, weights)
        return keras.ops.sum(outputs)

    def local_conv_with(inputs, weights):
        with ops.formulation(**formulation._asdict()):
            return _local_conv.local_conv(inputs, weights, 3, position_groups=2)

    assert tuple(local_conv_with(x, kernel).shape) == (1, 10, 10, 8)
    if keras.backend.backend() != "numpy":
        gradients(loss, x, kernel)
    assert recorder.sizes and max(recorder.sizes) < expanded
