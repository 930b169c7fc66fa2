"""Every formulation of the computation against the NumPy reference.

`local_conv` chooses, by shape and backend, between all positions at once and
positions in chunks, and between two row layouts of the input; each choice
is pinned here on every backend, through `keras_localconn.ops.formulation`
as a user pins it, so that none is only tested where it is the default.
"""

import math

import keras
import numpy as np
import pytest

from keras_localconn import _arguments, _local_conv, _machine, _schedule, ops
from keras_localconn._schedule import Formulation
from keras_localconn.layers import LocallyConnected2D
from tests.autodiff import gradients, to_numpy
from tests.helpers import (
    FORWARD_CASES,
    PADDING_CASES,
    assert_gradients_equal_directional_derivatives,
    batch_shape,
    formulation_id,
    forward_case_id,
    int8_encoded,
    padding_case_id,
    random_forward_problem,
)
from tests.reference import reference_local_conv

RTOL = ATOL = 2e-5

# Chunks of 3 leave a last chunk that overlaps the one before whenever P is
# not a multiple of 3. Together these cover every layout, both loops, the
# backward pass's groups of chunks (one, two, all), both ways it adds
# input-gradient contributions (scatter-add, segment sum), and the per-tap
# formulation, which has no patches.
FORMULATIONS = [
    Formulation(None, False, True),
    Formulation(None, True, True),
    Formulation(1, False, True, None, False),
    Formulation(3, True, True, 2),
    Formulation(1, True, False, 1, False),
    Formulation(3, False, False, 1),
    Formulation(3, True, False, None, False),
    Formulation(taps=True),
]


def _run(x, kernel, case, data_format, formulation, bias=None):
    """The engine on `case`, every choice of `formulation` pinned (a
    `scatter_add` of None: the one this Keras has)."""
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    with ops.formulation(**formulation._asdict()):
        return _local_conv.local_conv(
            x,
            kernel,
            kernel_size,
            strides=strides,
            padding=padding,
            dilation_rate=dilation,
            data_format=data_format,
            bias=bias,
        )


@pytest.mark.parametrize("formulation", FORMULATIONS, ids=formulation_id)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "case", FORWARD_CASES[::2] + FORWARD_CASES[-7:], ids=forward_case_id
)
def test_every_formulation_equals_numpy_reference(case, data_format, formulation):
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    x, kernel, out, filters = random_forward_problem(case, data_format)
    bias = np.random.default_rng(3).normal(size=(math.prod(out), filters))
    bias = bias.astype("float32")
    y = _run(x, kernel, case, data_format, formulation, bias=bias)
    expected = reference_local_conv(
        x, kernel, kernel_size, strides, dilation, padding, data_format
    )
    # The bias is one value per (output position, filter).
    per_position = bias.reshape(*out, filters)
    if data_format == "channels_first":
        per_position = np.moveaxis(per_position, -1, 0)
    expected = expected + per_position
    assert tuple(y.shape) == expected.shape
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.training
@pytest.mark.parametrize("formulation", FORMULATIONS[1:], ids=formulation_id)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", FORWARD_CASES[1::9], ids=forward_case_id)
def test_every_formulation_has_the_reference_gradients(case, data_format, formulation):
    """Directional derivatives, as in test_ops, through each formulation."""
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    x, kernel, out, filters = random_forward_problem(case, data_format)
    rng = np.random.default_rng(11)
    ref = dict(
        kernel_size=kernel_size,
        strides=strides,
        dilation=dilation,
        padding=padding,
        data_format=data_format,
    )
    cotangent = rng.normal(size=reference_local_conv(x, kernel, **ref).shape)
    cotangent = cotangent.astype("float32")

    def loss(inputs, weights):
        outputs = _run(inputs, weights, case, data_format, formulation)
        return keras.ops.sum(outputs * keras.ops.convert_to_tensor(cotangent))

    grads = gradients(loss, x, kernel)
    assert_gradients_equal_directional_derivatives(
        grads, x, kernel, cotangent, reference_local_conv, ref, rng
    )


L4 = _arguments.standardize_geometry((63, 63), 16, 9, 1, "valid", 1, "test")
MIB = 2**20


def test_a_chunks_patches_fill_the_cache_it_is_given():
    per_position = L4.patch_size * 32 * 4
    for cache in (MIB // 2, MIB, 2 * MIB, 8 * MIB):
        chunk = _schedule.chunk_positions(L4, 32, 4, 16, cache)
        assert 1 <= chunk < L4.num_positions
        # At most the cache, and at least half of it (a divisor of P near it).
        assert (cache // per_position) // 2 <= chunk <= cache // per_position
    # Equal chunks where a divisor of P (3025 = 5^2 * 11^2) is near.
    assert L4.num_positions % _schedule.chunk_positions(L4, 8, 4, 16, MIB) == 0


def test_chunks_cover_the_positions_without_recomputing_a_chunk():
    """Every unit count and target: equal chunks of at least half the
    target where a divisor allows, else no more chunks than the target needs
    and a last one that overlaps the one before by fewer units than there
    are chunks."""
    for units in range(1, 500):
        for target in range(1, units + 1):
            chunk = _schedule._largest_divisor_near(units, target)
            assert chunk <= target, (units, target, chunk)
            if units % chunk == 0:
                assert 2 * chunk >= target, (units, target, chunk)
                continue
            count = -(-units // chunk)
            assert count == -(-units // target), (units, target, chunk)
            assert count * chunk - units < count, (units, target, chunk)
    # DeepFace's L6 (441 positions) at batch 8, int8 in a 32 MiB cache: two
    # chunks of 221 (436 recomputed 431 positions).
    l6 = _arguments.standardize_geometry((25, 25), 16, 5, 1, "valid", 1, "test")
    chunk = _schedule.chunk_positions(
        l6, 8, 4, 16, MIB, decoded=True, last_level_bytes=32 * MIB
    )
    assert chunk == 221


def test_all_positions_go_at_once_where_chunks_do_not_pay():
    # Patches that fit the cache, whatever the batch.
    small = _arguments.standardize_geometry((8, 8), 2, 3, 1, "valid", 1, "test")
    assert _schedule.chunk_positions(small, 64, 4, 16, MIB) is None
    # Patches under a quarter of the kernel (batch < filters / 4).
    assert _schedule.chunk_positions(L4, 3, 4, 16, MIB) is None
    assert _schedule.chunk_positions(L4, 4, 4, 16, MIB) is not None
    # On an accelerator (no cache): at once unless they outweigh the kernel.
    assert _schedule.chunk_positions(L4, 16, 4, 16, None) is None
    chunk = _schedule.chunk_positions(L4, 32, 4, 16, None)
    assert chunk * L4.patch_size * 32 <= L4.num_positions * L4.patch_size * 16


def test_the_backward_pass_holds_no_more_contributions_than_the_kernel():
    chunk = _schedule.chunk_positions(L4, 32, 4, 16, MIB)
    group = _schedule.backward_group(L4, 32, 4, 16, chunk, MIB)
    kernel_bytes = L4.num_positions * L4.patch_size * 16 * 4
    assert group * chunk * L4.patch_size * 32 * 4 <= kernel_bytes
    # Below the kernel's size, every chunk at once.
    assert _schedule.backward_group(L4, 8, 4, 16, 25, MIB) is None


def test_the_cache_comes_from_the_machine_or_the_environment(tmp_path, monkeypatch):
    for index, (level, kind, size) in enumerate(
        [("1", "Data", "48K"), ("1", "Instruction", "32K"), ("2", "Unified", "2048K")]
    ):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(level + "\n")
        (folder / "type").write_text(kind + "\n")
        (folder / "size").write_text(size + "\n")
    assert _machine._sysfs_level2_bytes(tmp_path) == 2 * MIB
    assert _machine._sysfs_level2_bytes(tmp_path / "missing") is None
    # No level above 2: the last-level cache is the level-2 one.
    assert _machine._sysfs_last_level_share(tmp_path) is None
    level3 = tmp_path / "index3"
    level3.mkdir()
    (level3 / "level").write_text("3\n")
    (level3 / "type").write_text("Unified\n")
    (level3 / "size").write_text("32768K\n")
    (level3 / "shared_cpu_list").write_text("0-5,12,14-15\n")
    assert _machine._sysfs_last_level_share(tmp_path) == 32 * MIB // 9
    _machine.last_level_cache_bytes.cache_clear()
    monkeypatch.setenv(_machine.LAST_LEVEL_ENV, "4M")
    try:
        expected = max(4 * MIB * _machine.usable_cores(), _machine.cache_bytes())
        assert _machine.last_level_cache_bytes() == expected
    finally:
        monkeypatch.delenv(_machine.LAST_LEVEL_ENV)
        _machine.last_level_cache_bytes.cache_clear()
    assert _machine.last_level_cache_bytes() >= _machine.cache_bytes()
    _machine.core_cache_bytes.cache_clear()
    monkeypatch.setenv(_machine.CACHE_ENV, "3M")
    try:
        assert _machine.core_cache_bytes() == 3 * MIB
    finally:
        monkeypatch.delenv(_machine.CACHE_ENV)
        _machine.core_cache_bytes.cache_clear()
    assert _machine.core_cache_bytes() > 0
    assert _machine.usable_cores() >= 1


def test_an_unknown_batch_is_scheduled_as_the_assumed_batch():
    assumed = _schedule.formulation(L4, _schedule.ASSUMED_BATCH, "float32", 16)
    assert _schedule.formulation(L4, None, "float32", 16) == assumed


def test_many_chunks_go_through_one_loop_op_where_a_loop_would_be_unrolled():
    """`(605 chunks, 5 chunks)` go through `keras.ops.map` (or not) under the
    running backend: JAX always maps; TensorFlow unrolls a Python loop into
    its graph, so only a few chunks loop; torch runs eagerly, where `map` is
    a Python loop too."""
    expected = {
        "jax": (True, True),
        "tensorflow": (True, False),
        "torch": (False, False),
        "numpy": (True, True),
    }[keras.backend.backend()]
    with ops.formulation(chunk=5):  # 605 chunks
        many = _schedule.formulation(L4, 8, "float32", 16).loop_by_map
    with ops.formulation(chunk=605):  # 5 chunks
        few = _schedule.formulation(L4, 8, "float32", 16).loop_by_map
    assert (many, few) == expected


def test_a_pinned_formulation_replaces_the_rule_inside_its_block_only():
    rule = _schedule.formulation(L4, 8, "float32", 16)
    with ops.formulation(chunk=None, batch_before_channels=False):
        pinned = _schedule.formulation(L4, 8, "float32", 16)
        assert pinned.chunk is None and not pinned.batch_before_channels
        with ops.formulation(chunk=7):  # nested: the inner choice wins
            assert _schedule.formulation(L4, 8, "float32", 16).chunk == 7
        assert _schedule.formulation(L4, 8, "float32", 16) == pinned
    assert _schedule.formulation(L4, 8, "float32", 16) == rule
    with pytest.raises(TypeError, match="unknown choice.*chunks.*the choices are"):
        with ops.formulation(chunks=4):
            pass


def test_a_pinned_scatter_add_holds_for_both_engines_and_none_is_this_keras():
    assert _schedule.adds_by_scatter() == _schedule.HAS_SCATTER_ADD
    with ops.formulation(scatter_add=False):
        assert _schedule.adds_by_scatter() is False
        assert _schedule.formulation(L4, 8, "float32", 16).scatter_add is False
        with ops.formulation(scatter_add=None):
            assert _schedule.adds_by_scatter() == _schedule.HAS_SCATTER_ADD
            rule = _schedule.formulation(L4, 8, "float32", 16)
            assert rule.scatter_add == _schedule.HAS_SCATTER_ADD


def test_a_pinned_formulation_computes_the_same_layer():
    x = np.random.default_rng(0).normal(size=(2, 9, 8, 3)).astype("float32")
    layer = LocallyConnected2D(4, 3)
    expected = to_numpy(layer(x))
    for choices in ({"chunk": 4}, {"chunk": None}, {"chunk": 5, "loop_by_map": False}):
        with ops.formulation(**choices):
            np.testing.assert_allclose(
                to_numpy(layer(x)), expected, rtol=RTOL, atol=ATOL
            )


@pytest.mark.parametrize("formulation", FORMULATIONS, ids=formulation_id)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", PADDING_CASES[::3], ids=padding_case_id)
def test_every_formulation_with_circular_or_explicit_padding(
    case, data_format, formulation
):
    spatial, channels, kernel_size, strides, dilation, padding, ref_padding = case
    rng = np.random.default_rng(5)
    x = rng.normal(size=batch_shape(2, spatial, channels, data_format))
    x = x.astype("float32")
    out = ops.local_conv_output_shape(spatial, kernel_size, strides, padding, dilation)
    kernel = rng.normal(size=(math.prod(out), math.prod(kernel_size) * channels, 3))
    kernel = kernel.astype("float32")
    y = _run(
        x,
        kernel,
        (spatial, channels, kernel_size, strides, dilation, padding, 2),
        data_format,
        formulation,
    )
    expected = reference_local_conv(
        x, kernel, kernel_size, strides, dilation, ref_padding, data_format
    )
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("by_map", [False, True], ids=["loop", "map"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["cb", "bc"])
def test_chunks_in_a_model_traced_for_any_batch_size(batch_first, by_map):
    """A functional model is traced with an unknown batch size; predict
    then runs the chunked path on two sizes."""
    inputs = keras.Input((6, 5, 3))
    layer = LocallyConnected2D(4, (3, 2), use_bias=False)
    model = keras.Model(inputs, layer(inputs))
    kernel = to_numpy(layer.kernel)
    for batch in (3, 5):
        x = np.random.default_rng(batch).normal(size=(batch, 6, 5, 3))
        x = x.astype("float32")
        expected = reference_local_conv(
            x, kernel, (3, 2), (1, 1), (1, 1), "valid", "channels_last"
        )
        with ops.formulation(
            chunk=2, batch_before_channels=batch_first, loop_by_map=by_map, group=2
        ):
            y = model.predict(x, verbose=0)
        np.testing.assert_allclose(y, expected, rtol=RTOL, atol=ATOL)


def _encoded_problem(column_scale):
    """Inputs, an int8 encoded kernel, its decoded float kernel and the
    reference's arguments, on one forward case."""
    case = FORWARD_CASES[1]
    spatial, channels, kernel_size, strides, dilation, padding, batch = case
    x, kernel, out, filters = random_forward_problem(case, "channels_last")
    encoded, decoded = int8_encoded(kernel, column_scale)
    reference_arguments = dict(
        kernel_size=kernel_size,
        strides=strides,
        dilation=dilation,
        padding=padding,
        data_format="channels_last",
    )
    return case, x, encoded, decoded, reference_arguments


@pytest.mark.parametrize("column_scale", [False, True], ids=["decoded", "column"])
@pytest.mark.parametrize("formulation", FORMULATIONS, ids=formulation_id)
def test_an_encoded_kernel_is_decoded_chunk_by_chunk(formulation, column_scale):
    """Forward against the reference on the decoded kernel, its scale
    applied to the kernel or to the outputs."""
    case, x, encoded, decoded, ref = _encoded_problem(column_scale)
    y = _run(x, encoded, case, "channels_last", formulation)
    expected = reference_local_conv(x, decoded, **ref)
    np.testing.assert_allclose(to_numpy(y), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.training
@pytest.mark.parametrize("column_scale", [False, True], ids=["decoded", "column"])
@pytest.mark.parametrize("formulation", FORMULATIONS, ids=formulation_id)
def test_the_gradient_reaches_the_inputs_through_an_encoded_kernel(
    formulation, column_scale
):
    """That of the decoded kernel, chunk by chunk (an encoded kernel has no
    gradient of its own)."""
    case, x, encoded, decoded, ref = _encoded_problem(column_scale)
    expected_shape = reference_local_conv(x, decoded, **ref).shape
    cotangent = np.random.default_rng(5).normal(size=expected_shape).astype("float32")

    def loss(inputs):
        outputs = _run(inputs, encoded, case, "channels_last", formulation)
        return keras.ops.sum(outputs * keras.ops.convert_to_tensor(cotangent))

    (grad_inputs,) = gradients(loss, x)
    v = np.random.default_rng(6).normal(size=x.shape)
    np.testing.assert_allclose(
        np.sum(grad_inputs * v),
        np.sum(cotangent * reference_local_conv(v, decoded, **ref)),
        rtol=1e-4,
        atol=1e-3,
    )


def test_a_decoded_kernel_chunks_even_where_the_float_one_goes_at_once():
    # Batch 1: float patches weigh far under a quarter of the kernel.
    assert _schedule.chunk_positions(L4, 1, 4, 16, MIB) is None
    chunk = _schedule.chunk_positions(L4, 1, 4, 16, MIB, decoded=True)
    assert chunk * L4.patch_size * (1 + 16) * 4 <= MIB // 2
    # The decoded rows fill half the last-level cache where one is given.
    for last_level in (8 * MIB, 32 * MIB, 128 * MIB):
        larger = _schedule.chunk_positions(
            L4, 1, 4, 16, MIB, decoded=True, last_level_bytes=last_level
        )
        assert larger > chunk
        assert larger * L4.patch_size * (1 + 16) * 4 <= last_level // 2
        assert 2 * larger * L4.patch_size * (1 + 16) * 4 > last_level // 2 * 0.9
    small = _arguments.standardize_geometry((8, 8), 2, 3, 1, "valid", 1, "test")
    assert _schedule.chunk_positions(small, 1, 4, 4, MIB, decoded=True) is None
