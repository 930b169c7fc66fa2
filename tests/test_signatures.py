"""The public constructors: complete, typed signatures that match the config.

As Keras' `BaseConv` and `Dense`, every layer lists each of its arguments
(none hidden in ``*args`` or in ``**kwargs`` that a mixin consumes), and
`get_config` holds each of them, so that ``from_config(get_config())``
rebuilds the layer. ``**kwargs`` carries only what `keras.layers.Layer`
takes itself.
"""

import inspect

import keras
import pytest

from keras_localconn import layers
from keras_localconn.layers._quantization import HAS_QUANTIZATION_CONFIGS

FORWARD = (
    layers.LocallyConnected1D,
    layers.LocallyConnected2D,
    layers.LocallyConnected3D,
)
TRANSPOSED = (
    layers.LocallyConnected1DTranspose,
    layers.LocallyConnected2DTranspose,
    layers.LocallyConnected3DTranspose,
)
PUBLIC = FORWARD + TRANSPOSED
BASES = (layers.BaseLocallyConnected, layers.BaseLocallyConnectedTranspose)

# Config keys that `keras.layers.Layer.get_config` writes from the base
# layer's keyword arguments, which the layers take through `**kwargs`.
HANDLED_BY_LAYER = {"name", "trainable", "dtype"}


def _rank(layer_class):
    return int(layer_class.__name__[len("LocallyConnected")])


def _parameters(layer_class):
    """The constructor's named parameters, in order (`self` and `**kwargs`
    left out)."""
    return [
        parameter
        for name, parameter in inspect.signature(
            layer_class.__init__
        ).parameters.items()
        if name != "self" and parameter.kind != inspect.Parameter.VAR_KEYWORD
    ]


def _arguments(layer_class):
    """A value for every constructor argument, none its default, so that an
    argument forwarded to the wrong parameter changes the config."""
    rank = _rank(layer_class)
    # Strides and dilation above 1 on different axes (a layer takes that).
    strides = (2,) + (1,) * (rank - 1)
    dilation_rate = (1,) * (rank - 1) + (2,) if rank > 1 else 1
    arguments = {
        "filters": 3,
        "kernel_size": 2,
        "strides": strides,
        "padding": "same",
        "data_format": "channels_first",
        "dilation_rate": dilation_rate,
        "activation": "relu",
        "use_bias": False,
        "kernel_initializer": "he_normal",
        "bias_initializer": "ones",
        "kernel_regularizer": "l2",
        "bias_regularizer": "l1",
        "activity_regularizer": keras.regularizers.L1L2(0.1, 0.2),
        "kernel_constraint": "non_neg",
        "bias_constraint": "unit_norm",
        "lora_rank": 2,
        "lora_alpha": 3.0,
        "quantization_config": (
            keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
            if HAS_QUANTIZATION_CONFIGS
            else None
        ),
    }
    if layer_class in FORWARD:
        arguments["implementation"] = 1  # 2 and 3 only warn and compute alike
        arguments["position_groups"] = 2
    else:
        arguments["output_padding"] = (1,) + (0,) * (rank - 1)
    return arguments


@pytest.mark.parametrize("layer_class", PUBLIC, ids=lambda c: c.__name__)
def test_every_constructor_argument_is_a_config_key_and_every_key_an_argument(
    layer_class,
):
    """Both directions; the exceptions are Layer's own keys (`name`,
    `trainable`, `dtype`, through ``**kwargs``). `lora_rank` and `lora_alpha`
    are written only where LoRA is asked for, as Keras' Conv writes them."""
    names = {parameter.name for parameter in _parameters(layer_class)}
    config = layer_class(**_arguments(layer_class)).get_config()
    assert names - set(config) == set()
    assert set(config) - names == HANDLED_BY_LAYER


@pytest.mark.parametrize("layer_class", PUBLIC, ids=lambda c: c.__name__)
def test_arguments_passed_by_position_configure_the_layer_as_by_keyword(layer_class):
    """Every argument reaches its own parameter through the base classes,
    in the order the signature gives."""
    arguments = _arguments(layer_class)
    by_keyword = layer_class(**arguments, name="layer").get_config()
    positional = [arguments[p.name] for p in _parameters(layer_class)]
    by_position = layer_class(*positional, name="layer").get_config()
    assert by_position == by_keyword
    rebuilt = layer_class.from_config(by_keyword).get_config()
    assert rebuilt == by_keyword


@pytest.mark.parametrize("layer_class", PUBLIC + BASES, ids=lambda c: c.__name__)
def test_no_constructor_hides_arguments_in_star_args_and_every_one_is_typed(
    layer_class,
):
    signature = inspect.signature(layer_class.__init__)
    kinds = [parameter.kind for parameter in signature.parameters.values()]
    assert inspect.Parameter.VAR_POSITIONAL not in kinds
    untyped = [
        p.name
        for p in _parameters(layer_class)
        if p.annotation is inspect.Parameter.empty
    ]
    assert untyped == []
    assert signature.return_annotation is None


@pytest.mark.parametrize("layer_class", PUBLIC, ids=lambda c: c.__name__)
def test_each_rank_lists_its_base_arguments_in_their_order_with_their_defaults(
    layer_class,
):
    base = (
        layers.BaseLocallyConnected
        if layer_class in FORWARD
        else layers.BaseLocallyConnectedTranspose
    )
    base_parameters = [p for p in _parameters(base) if p.name != "rank"]
    described = [(p.name, p.default) for p in _parameters(layer_class)]
    assert described == [(p.name, p.default) for p in base_parameters]
