"""Keras' own layer checks (`run_layer_test`) over every public layer.

Shapes, weights, losses, serialization, training (not under numpy) and mixed
precision (not on torch's CPU: Keras leaves these out there), over a covering
grid of configurations per rank, as Keras' `conv_test.py` holds its
convolutions to them. The expected output shapes come from the references.
This module is the tests' one `TestCase`; the others are plain pytest.
"""

from absl.testing import parameterized

from keras_localconn import (
    LocallyConnected1D,
    LocallyConnected1DTranspose,
    LocallyConnected2D,
    LocallyConnected2DTranspose,
    LocallyConnected3D,
    LocallyConnected3DTranspose,
)
from tests.helpers import LOCALLY_CONNECTED, batch_shape
from tests.keras_testing import TestCase
from tests.reference import reference_output_shape
from tests.reference_transpose import reference_transpose_length

_REGULARIZERS = ("kernel_regularizer", "bias_regularizer", "activity_regularizer")
REGULARIZED = dict(activity_regularizer="l2", kernel_regularizer="l1")


def layer_test_parameters(name, input_spatial, output_spatial, **init_kwargs):
    """One named configuration of `TestCase.run_layer_test`, Keras' checks.

    A batch of 2 with 2 channels in `init_kwargs`' data format goes in;
    `output_spatial`, which the caller derives from a reference, comes out
    with `init_kwargs["filters"]` channels. The layer holds a kernel and,
    unless `use_bias=False`, a bias, all trainable, and adds one loss for
    each regularizer in `init_kwargs`.
    """
    assert min(output_spatial) > 0, f"{name}: an empty output {output_spatial}"
    data_format = init_kwargs.get("data_format", "channels_last")
    return dict(
        testcase_name=name,
        init_kwargs=init_kwargs,
        input_shape=batch_shape(2, input_spatial, 2, data_format),
        expected_output_shape=batch_shape(
            2, output_spatial, init_kwargs["filters"], data_format
        ),
        expected_num_trainable_weights=2 if init_kwargs.get("use_bias", True) else 1,
        expected_num_non_trainable_weights=0,
        expected_num_losses=sum(key in init_kwargs for key in _REGULARIZERS),
        supports_masking=False,
    )


def forward(name, spatial, **init_kwargs):
    """A `LocallyConnectedND` configuration, its output shape from the reference."""
    rank = len(spatial)
    output_spatial = reference_output_shape(
        spatial,
        init_kwargs["kernel_size"],
        init_kwargs.get("strides", (1,) * rank),
        init_kwargs.get("dilation_rate", (1,) * rank),
        init_kwargs.get("padding", "valid"),
    )
    return layer_test_parameters(name, spatial, output_spatial, **init_kwargs)


def transposed(name, spatial, output_padding=None, **init_kwargs):
    """A `LocallyConnectedNDTranspose` configuration, its output shape from the
    reference."""
    rank = len(spatial)
    output_spatial = tuple(
        reference_transpose_length(n, k, s, d, init_kwargs.get("padding", "valid"), op)
        for n, k, s, d, op in zip(
            spatial,
            init_kwargs["kernel_size"],
            init_kwargs.get("strides", (1,) * rank),
            init_kwargs.get("dilation_rate", (1,) * rank),
            output_padding or (None,) * rank,
        )
    )
    if output_padding is not None:
        init_kwargs["output_padding"] = output_padding
    return layer_test_parameters(name, spatial, output_spatial, **init_kwargs)


# A covering set, not a product: in every rank each padding mode, strides,
# dilation, both data formats, a layer without bias and one with
# regularizers. Explicit padding is written as the reference takes it.
FORWARD = {
    1: [
        forward("valid_strided", (7,), filters=3, kernel_size=(3,), strides=(2,)),
        forward(
            "same_dilated_channels_first",
            (7,),
            filters=3,
            kernel_size=(3,),
            dilation_rate=(2,),
            padding="same",
            data_format="channels_first",
        ),
        forward(
            "causal_dilated",
            (6,),
            filters=3,
            kernel_size=(2,),
            dilation_rate=(2,),
            padding="causal",
        ),
        forward(
            "circular_strided_channels_first_without_bias",
            (7,),
            filters=3,
            kernel_size=(3,),
            strides=(2,),
            padding="circular",
            data_format="channels_first",
            use_bias=False,
        ),
        forward(
            "explicit_dilated_regularized",
            (7,),
            filters=3,
            kernel_size=(2,),
            dilation_rate=(2,),
            padding=((2, 1),),
            **REGULARIZED,
        ),
    ],
    2: [
        forward(
            "same_strided_channels_first_regularized",
            (5, 4),
            filters=3,
            kernel_size=(3, 2),
            strides=(2, 1),
            padding="same",
            data_format="channels_first",
            **REGULARIZED,
        ),
        forward(
            "valid_dilated",
            (5, 4),
            filters=3,
            kernel_size=(3, 2),
            dilation_rate=(1, 2),
        ),
        forward(
            "circular_strided_without_bias",
            (5, 4),
            filters=3,
            kernel_size=(3, 3),
            strides=(2, 2),
            padding="circular",
            use_bias=False,
        ),
        forward(
            "explicit_dilated_channels_first",
            (5, 4),
            filters=3,
            kernel_size=(2, 2),
            dilation_rate=(2, 1),
            padding=((1, 0), (2, 1)),
            data_format="channels_first",
        ),
    ],
    3: [
        forward(
            "valid_strided_without_bias",
            (4, 3, 3),
            filters=2,
            kernel_size=(2, 2, 2),
            strides=(2, 1, 2),
            use_bias=False,
        ),
        forward(
            "same_dilated_channels_first",
            (4, 3, 3),
            filters=2,
            kernel_size=(2, 2, 2),
            dilation_rate=(1, 2, 1),
            padding="same",
            data_format="channels_first",
        ),
        forward(
            "circular_strided_channels_first_regularized",
            (4, 3, 3),
            filters=2,
            kernel_size=(3, 2, 2),
            strides=(2, 2, 1),
            padding="circular",
            data_format="channels_first",
            **REGULARIZED,
        ),
        forward(
            "explicit_dilated",
            (4, 3, 3),
            filters=2,
            kernel_size=(2, 2, 2),
            dilation_rate=(2, 1, 1),
            padding=((1, 1), (0, 1), (1, 0)),
        ),
    ],
}

# In every rank "valid", "same" and an `output_padding`, strides, dilation,
# both data formats, a layer without bias and one with regularizers.
TRANSPOSED = {
    1: [
        transposed("valid_strided", (4,), filters=3, kernel_size=(3,), strides=(2,)),
        transposed(
            "same_dilated_channels_first",
            (4,),
            filters=3,
            kernel_size=(3,),
            dilation_rate=(2,),
            padding="same",
            data_format="channels_first",
        ),
        transposed(
            "output_padding_strided_channels_first_without_bias",
            (4,),
            output_padding=(2,),
            filters=3,
            kernel_size=(2,),
            strides=(3,),
            data_format="channels_first",
            use_bias=False,
        ),
        transposed(
            "same_strided_regularized",
            (4,),
            filters=3,
            kernel_size=(3,),
            strides=(2,),
            padding="same",
            **REGULARIZED,
        ),
    ],
    2: [
        transposed(
            "output_padding_strided_channels_first_regularized",
            (4, 3),
            output_padding=(1, 0),
            filters=3,
            kernel_size=(3, 2),
            strides=(2, 1),
            data_format="channels_first",
            **REGULARIZED,
        ),
        transposed(
            "valid_dilated", (4, 3), filters=3, kernel_size=(2, 2), dilation_rate=(1, 2)
        ),
        transposed(
            "same_strided_without_bias",
            (4, 3),
            filters=3,
            kernel_size=(3, 3),
            strides=(2, 2),
            padding="same",
            use_bias=False,
        ),
    ],
    3: [
        transposed(
            "valid_strided_without_bias",
            (2, 3, 2),
            filters=2,
            kernel_size=(2, 2, 2),
            strides=(1, 2, 1),
            use_bias=False,
        ),
        transposed(
            "same_dilated_channels_first",
            (2, 3, 2),
            filters=2,
            kernel_size=(2, 2, 2),
            dilation_rate=(2, 1, 1),
            padding="same",
            data_format="channels_first",
        ),
        transposed(
            "output_padding_strided_regularized",
            (2, 3, 2),
            output_padding=(1, 0, 1),
            filters=2,
            kernel_size=(2, 3, 2),
            strides=(2, 1, 2),
            padding="same",
            **REGULARIZED,
        ),
    ],
}

# Position groups as a block shape in 1D and 3D, as a map in 2D.
GROUPED = [
    forward("blocks_1d", (9,), filters=3, kernel_size=(3,), position_groups=3),
    forward(
        "map_2d_channels_first",
        (5, 4),
        filters=3,
        kernel_size=(2, 2),
        padding="same",
        data_format="channels_first",
        position_groups=[[0, 1, 1, 0]] * 5,
    ),
    forward(
        "blocks_3d", (4, 4, 3), filters=2, kernel_size=(2, 2, 2), position_groups=2
    ),
]


class KerasLayerContractTest(TestCase):
    @parameterized.named_parameters(*FORWARD[1])
    def test_locally_connected_1d_meets_the_keras_layer_contract(self, **arguments):
        self.run_layer_test(LocallyConnected1D, **arguments)

    @parameterized.named_parameters(*FORWARD[2])
    def test_locally_connected_2d_meets_the_keras_layer_contract(self, **arguments):
        self.run_layer_test(LocallyConnected2D, **arguments)

    @parameterized.named_parameters(*FORWARD[3])
    def test_locally_connected_3d_meets_the_keras_layer_contract(self, **arguments):
        self.run_layer_test(LocallyConnected3D, **arguments)

    @parameterized.named_parameters(*TRANSPOSED[1])
    def test_locally_connected_1d_transpose_meets_the_keras_layer_contract(
        self, **arguments
    ):
        self.run_layer_test(LocallyConnected1DTranspose, **arguments)

    @parameterized.named_parameters(*TRANSPOSED[2])
    def test_locally_connected_2d_transpose_meets_the_keras_layer_contract(
        self, **arguments
    ):
        self.run_layer_test(LocallyConnected2DTranspose, **arguments)

    @parameterized.named_parameters(*TRANSPOSED[3])
    def test_locally_connected_3d_transpose_meets_the_keras_layer_contract(
        self, **arguments
    ):
        self.run_layer_test(LocallyConnected3DTranspose, **arguments)

    @parameterized.named_parameters(*GROUPED)
    def test_a_grouped_layer_meets_the_keras_layer_contract(self, **arguments):
        rank = len(arguments["input_shape"]) - 2
        self.run_layer_test(LOCALLY_CONNECTED[rank], **arguments)
