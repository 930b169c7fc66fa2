"""Agreement with Keras 2 (tf-keras) `LocallyConnected1D/2D(implementation=1)`.

tf-keras is a test-only dependency of the tensorflow session; these tests are
deselected under the other backends.
"""

import numpy as np
import pytest

from keras_localconn import LocallyConnected1D, LocallyConnected2D
from tests.autodiff import to_numpy
from tests.helpers import batch_shape, random_array

pytestmark = pytest.mark.backends("tensorflow")

CASES = [
    # (rank, spatial, channels, kernel_size, strides)
    (1, (9,), 3, 3, 1),
    (1, (10,), 2, 4, 3),
    (1, (5,), 1, 5, 1),
    (2, (7, 6), 3, (3, 2), (1, 1)),
    (2, (8, 9), 2, 3, (2, 3)),
    (2, (4, 4), 1, (4, 4), 1),
]


def _keras2_bias_as_ours(bias, data_format):
    """What Keras 2 added where: with channels_first it read its bias array
    through a raw reshape to (filters, *out), not a transpose."""
    if data_format == "channels_last":
        return bias
    out, filters = bias.shape[:-1], bias.shape[-1]
    return np.moveaxis(bias.reshape(filters, *out), 0, -1)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}d-{c[1]}-k{c[3]}-s{c[4]}")
def test_matches_tf_keras_implementation_1_given_the_same_weights(case, data_format):
    import tf_keras

    rank, spatial, channels, kernel_size, strides = case
    old_cls = {
        1: tf_keras.layers.LocallyConnected1D,
        2: tf_keras.layers.LocallyConnected2D,
    }
    new_cls = {1: LocallyConnected1D, 2: LocallyConnected2D}
    kwargs = dict(
        filters=4,
        kernel_size=kernel_size,
        strides=strides,
        data_format=data_format,
        activation="tanh",
    )
    shape = batch_shape(2, spatial, channels, data_format)
    x = random_array(shape)

    old = old_cls[rank](implementation=1, **kwargs)
    old.build(shape)
    rng = np.random.default_rng(1)
    kernel, bias = (
        rng.normal(size=w.shape).astype("float32") for w in old.get_weights()
    )
    old.set_weights([kernel, bias])
    expected = old(x).numpy()

    new = new_cls[rank](**kwargs)
    new.build(shape)
    assert [tuple(w.shape) for w in new.weights] == [kernel.shape, bias.shape]
    new.set_weights([kernel, _keras2_bias_as_ours(bias, data_format)])
    np.testing.assert_allclose(to_numpy(new(x)), expected, rtol=1e-5, atol=1e-5)
