"""Keras' quantization API on the locally connected layers: `layer.quantize`.

`LocalQuantization` is mixed into `LocalBase`. It follows Keras' `Dense`
(`keras/src/layers/core/dense.py`) name for name: `quantize(mode, config)`
turns the float kernel into an int8 (or packed int4) one and sets the dtype
policy to ``"int8_from_<policy>"`` (``"int4/<block size>_from_<policy>"``);
`quantized_build` creates the quantized variables directly when a quantized
layer is built (a quantized ``.keras`` file loads without allocating a float
kernel); `_int8_call` / `_int4_call` are what Keras calls instead of `call`
once the policy is quantized; `variable_serialization_spec`,
`save_own_variables` and `load_own_variables` store the variables in Dense's
order; `quantization_config` is taken and serialized.

int8: the kernel, ``(P, K, filters)``, has one scale per (position, filter):
abs-max over ``K``, the contracted axis, as Dense has one per unit (abs-max
over its inputs axis). Keras' convention: ``kernel_int8 = round(kernel *
kernel_scale)`` and the float kernel is ``kernel_int8 / kernel_scale``.
int4, as Dense's: values in [-8, 7] packed two a byte along the output axis
(`keras.quantizers.pack_int4`); with a block size (Keras' default, 128), a
scale and a zero point per (position, block of ``K``, filter) and the float
kernel ``(int4 - zero) * scale``; with ``block_size=-1``, one abs-max scale
per (position, filter). A transposed layer's kernel ``(P, K, channels)``
contracts its last axis: its scales are over the channels, and int4 packs
along ``K`` (`_contracted_axis`, `_output_axis`).

The engine takes the quantized kernel as an `EncodedKernel` and decodes one
chunk of positions at a time, so that the kernel is read in int8; gradients
reach the inputs only.

LoRA on a quantized layer (QLoRA), as Dense has it, in either order:
`enable_lora` on a quantized layer adds the float32 factors of the logical
kernel ``(P, K, F)`` (an int4 one is stored packed); `quantize` on a
LoRA-enabled layer quantizes the base kernel only and keeps the factors. The
quantized variables are not trained. The call computes with a float kernel,
``dequantized kernel + (lora_alpha / rank) * delta``, merged anew at each
call (`_engine_kernel`), so that the engine's gradient with respect to its
kernel reaches the factors: a limitation, since the call (training or not)
materializes a float kernel of the layer's full size transiently, where a
quantized layer alone reads its kernel in int8; int8 inputs are still
quantized. Saving stores, as Dense's `_get_kernel_with_merged_lora`, the
merged kernel quantized again in the layer's mode and block size; loading
assigns it and zeros the factors.

Inputs: Keras' default `Int8QuantizationConfig` quantizes Dense's inputs with
an abs-max scale per row (over the contracted axis). The rows contracted
here are patches, which only the engine builds; a scale per patch would have
to be computed inside it. What the layer can do is one scale per sample
(abs-max over all of a sample's values): it bounds every patch's values the
same way, and ``sum(q_in * q_kernel) / (s_sample * s_kernel[p, f])`` is
still an exact rescaling of an int8 x int8 contraction. The inputs are
quantized and dequantized before the engine (the gradient passes straight
through, as Dense's custom gradient lets it).
"""

import math

import keras
import numpy as np
from keras import dtype_policies, ops, quantizers
from keras.saving import deserialize_keras_object, serialize_keras_object

from keras_localconn import _keras_private

# The modes these layers implement; Keras knows more (`float8`, `gptq`,
# `awq`), which they refuse with a NotImplementedError, the error
# `Model.quantize` turns into a warning, so that the rest of a model is
# still quantized.
SUPPORTED_MODES = ("int8", "int4")
# Keras 3.13 added the quantization configs (and int4 to Layer.quantize);
# an older Keras refuses `quantize` on these layers with a clear error.
HAS_QUANTIZATION_CONFIGS = hasattr(quantizers, "Int8QuantizationConfig")


def _is_package_layer_class(layer_class):
    """Whether `layer_class` is one of this package's layer classes itself,
    not a subclass (Dense's check, ``type(self) is Dense``, by type)."""
    # Imported here: `keras_localconn.layers` imports this module.
    from keras_localconn import layers

    return any(layer_class is getattr(layers, name) for name in layers.__all__)


def _weight_quantizer(config, default):
    """`QuantizationConfig.weight_quantizer_or_default`, on any Keras 3."""
    quantizer = getattr(config, "weight_quantizer", None)
    return default if quantizer is None else quantizer


def _activation_quantizer(config, default):
    """`QuantizationConfig.activation_quantizer_or_default`: a config's own
    (None: weight-only), else `default`."""
    if config is not None:
        return getattr(config, "activation_quantizer", None)
    return default


def _quantize_grouped(kernel, block_size, axis):
    """Keras' grouped int4 quantization (a scale and a zero point per block
    of `block_size` rows of the contracted `axis`) of a 3D kernel: every
    line of the kernel along `axis` is one of the columns Keras' function
    quantizes (Dense's kernel is ``(inputs, units)``)."""
    kernel = np.moveaxis(ops.convert_to_numpy(kernel), axis, 0)
    others = kernel.shape[1:]
    columns = kernel.reshape(kernel.shape[0], -1)
    values, scale, zero = quantizers.abs_max_quantize_grouped_with_zero_point(
        columns, block_size=block_size, to_numpy=True
    )

    def restored(x):
        x = ops.convert_to_numpy(x)
        return np.moveaxis(x.reshape(x.shape[0], *others), 0, axis)

    return restored(values), restored(scale), restored(zero)


class LocalQuantization:
    """`quantize`, `quantized_build`, `_int8_call`, `_int4_call` and their
    serialization.

    The layer provides `_kernel` (its stored kernel), `_owner`, `bias`,
    `call` (which computes with `_engine_kernel()`), and, from
    `LocalLoRA`, `lora_enabled`, `_lora_delta()` and `kernel` (merged with
    LoRA); its constructor sets `quantization_config` and
    `inputs_quantizer` (None).
    """

    # The modes a layer family implements, and the axes of its kernel: the
    # one its engine contracts (abs-max over it: one scale per position and
    # row of the other), and the output one (int4 packs along it, as Dense
    # packs its units). A forward kernel (P, K, filters) contracts K.
    _quantization_modes = SUPPORTED_MODES
    _contracted_axis = 1
    _output_axis = 2

    # ------------------------------------------------------------------
    # quantize
    # ------------------------------------------------------------------

    def _unsupported_mode_error(self, mode):
        return NotImplementedError(
            f"{self._owner}: quantization mode {mode!r} is not supported. "
            f"Supported modes: {self._quantization_modes}. Received: mode={mode!r}"
        )

    def quantize(self, mode=None, type_check=True, config=None):
        """Quantizes the kernel in place: `mode` "int8" or "int4" (see the
        module).

        Keras' wrapper has already checked that the layer is built, not
        quantized yet, and that int8 is not asked for under a float16
        compute dtype; `config` is an `Int8QuantizationConfig` (with
        ``activation_quantizer=None``: weight-only) or an
        `Int4QuantizationConfig` (its `block_size`).
        """
        if not HAS_QUANTIZATION_CONFIGS:
            raise NotImplementedError(
                f"{self._owner}: quantizing a locally connected layer needs "
                f"Keras >= 3.13 (keras.quantizers.Int8QuantizationConfig and "
                f"int4 mode); this is Keras {keras.__version__}."
            )
        if type_check and not _is_package_layer_class(type(self)):
            # Dense refuses its subclasses: a subclass may compute otherwise.
            raise _keras_private.not_implemented_error(self, self.quantize)
        if mode not in self._quantization_modes:
            raise self._unsupported_mode_error(mode)
        # With LoRA enabled, as Dense: the base kernel only is quantized; the
        # factors stay float and trainable (see the module).
        self.quantization_config = config
        kernel_shape = tuple(self._kernel.shape)
        block_size = self._int4_block_size_of(config) if mode == "int4" else None
        values, scale, zero = self._quantized_values(
            ops.convert_to_tensor(self._kernel), mode, config, block_size
        )
        del self._kernel
        self.quantized_build(kernel_shape, mode, config)
        self._kernel.assign(values)
        self.kernel_scale.assign(scale)
        if zero is not None:
            self.kernel_zero.assign(zero)
        if self.dtype_policy.quantization_mode is None:
            policy_mode = mode
            if mode == "int4":
                block_size = self._int4_block_size
                policy_mode = f"int4/{-1 if block_size is None else block_size}"
            self.dtype_policy = dtype_policies.get(
                f"{policy_mode}_from_{self.dtype_policy.name}"
            )

    def _quantized_values(self, kernel, mode, config=None, block_size=None):
        """``(values, scale, zero)`` of a float kernel ``(P, K, F)``: what
        `mode`'s variables hold (int4: packed; `zero` None but with int4
        blocks). `quantize` and the saving of a quantized LoRA layer (its
        merged kernel requantized) share it."""
        zero = None
        if mode == "int8":
            values, scale = self._quantize_kernel(
                kernel, config, quantizers.AbsMaxQuantizer()
            )
        else:  # int4, packed two values a byte along the output axis
            if block_size is None:
                default = quantizers.AbsMaxQuantizer(value_range=(-8, 7))
                values, scale = self._quantize_kernel(kernel, config, default)
            else:
                values, scale, zero = _quantize_grouped(
                    kernel, block_size, self._contracted_axis
                )
            values, _, _ = quantizers.pack_int4(values, axis=self._output_axis)
        return values, scale, zero

    def _int4_block_size_of(self, config):
        """The int4 block size (along K) of `config`, else of the dtype
        policy (a loaded layer's); None for one scale per (position, filter)."""
        if getattr(config, "mode", None) == "int4" and hasattr(config, "block_size"):
            block_size = config.block_size
        else:
            block_size = getattr(self.dtype_policy, "block_size", None)
        return None if block_size in (None, -1) else block_size

    def _quantize_kernel(self, kernel, config, default):
        """``(int8 values, scale)``: abs-max over the contracted axis, a
        scale per position and output row ((P, K, F) gives (P, F))."""
        axis = self._contracted_axis
        quantizer = _weight_quantizer(config, default)
        values, scale = quantizer(kernel, axis=axis, to_numpy=True)
        expected = self._scale_shape(tuple(kernel.shape), 1)
        if tuple(scale.shape) != expected:
            raise ValueError(
                f"{self._owner}: the weight quantizer must give one scale per "
                f"position and output row, of shape {expected}, when called "
                f"with axis={axis} on the kernel of shape {tuple(kernel.shape)}. "
                f"Received a scale of shape {tuple(scale.shape)} from {quantizer!r}"
            )
        return values, ops.squeeze(scale, axis=axis)

    def _scale_shape(self, kernel_shape, blocks=None):
        """The kernel's shape with its contracted axis dropped (one scale a
        line), or of length `blocks` (one per block of it)."""
        shape = list(kernel_shape)
        if blocks is None:
            del shape[self._contracted_axis]
        else:
            shape[self._contracted_axis] = blocks
        return tuple(shape)

    def quantized_build(self, kernel_shape, mode, config=None):
        """The quantized variables of a kernel of shape `kernel_shape`."""
        if mode == "int8":
            self._int8_build(kernel_shape, config)
        elif mode == "int4":
            self._int4_build(kernel_shape, config)
        else:
            raise self._unsupported_mode_error(mode)
        _keras_private.mark_quantized(self)

    def _int8_build(self, kernel_shape, config=None):
        self.inputs_quantizer = _activation_quantizer(
            config, quantizers.AbsMaxQuantizer()
        )
        self._kernel = self.add_weight(
            name="kernel",
            shape=kernel_shape,
            initializer="zeros",
            dtype="int8",
            trainable=False,
        )
        self.kernel_scale = self.add_weight(
            name="kernel_scale",
            shape=self._scale_shape(kernel_shape),
            initializer="ones",
            trainable=False,
        )

    def _int4_build(self, kernel_shape, config=None):
        """A kernel packed along its output axis (``(P, K, ceil(F / 2))``
        int8); one scale per position and output row, or, with a block size,
        a scale and a zero point per position, block of the contracted axis
        and output row, as Dense's int4."""
        self.inputs_quantizer = _activation_quantizer(config, None)
        packed_shape = list(kernel_shape)
        packed_shape[self._output_axis] = (kernel_shape[self._output_axis] + 1) // 2
        self._int4_kernel_shape = tuple(kernel_shape)
        self._kernel = self.add_weight(
            name="kernel",
            shape=tuple(packed_shape),
            initializer="zeros",
            dtype="int8",
            trainable=False,
        )
        block_size = self._int4_block_size_of(config)
        self._int4_block_size = block_size
        if block_size is None:
            scale_shape = self._scale_shape(kernel_shape)
        else:
            contracted = kernel_shape[self._contracted_axis]
            blocks = math.ceil(contracted / block_size)
            scale_shape = self._scale_shape(kernel_shape, blocks)
        self.kernel_scale = self.add_weight(
            name="kernel_scale",
            shape=scale_shape,
            initializer="ones",
            trainable=False,
        )
        if block_size is not None:
            self.kernel_zero = self.add_weight(
                name="kernel_zero",
                shape=scale_shape,
                initializer="zeros",
                dtype="int8",
                trainable=False,
            )

    # ------------------------------------------------------------------
    # call
    # ------------------------------------------------------------------

    def _engine_kernel(self):
        """What `call` hands the engine: the (merged) float kernel, or the
        quantized kernel and its scales as an `EncodedKernel`."""
        if self._quantized_with_lora():
            # QLoRA: a float kernel per call, for the gradient (see the module).
            delta = ops.cast(self._lora_delta(), self.compute_dtype)
            return ops.add(self._dequantized_kernel(), delta)
        if self.quantization_mode is None:
            return self.kernel
        return self._encoded_kernel()

    def _quantized_with_lora(self):
        """Whether the layer is quantized and has LoRA enabled (QLoRA)."""
        return self.quantization_mode is not None and self.lora_enabled

    def _dequantized_kernel(self):
        """The float kernel ``(P, K, F)`` (compute dtype) that the quantized
        variables stand for: the engine's decoding, of every position."""
        encoded = self._encoded_kernel()
        return encoded.rows(0, encoded.shape[0])

    def _encoded_kernel(self):
        """The quantized kernel and its scales as an `EncodedKernel`."""
        from keras_localconn._local_conv import EncodedKernel

        mode = self.quantization_mode
        compute_dtype = self.compute_dtype
        axis = self._contracted_axis

        def per_line(values, scale):  # (c, K, F) int8, (c, F) (forward)
            return ops.divide(
                ops.cast(values, compute_dtype),
                ops.expand_dims(ops.cast(scale, compute_dtype), axis),
            )

        def encoded(parts, values_of, shape):
            """One scale per (position, output row): a forward kernel's
            scales are its columns', applied to the outputs by the engine
            (`EncodedKernel.column_scale`); a transposed one's divide the
            decoded values."""
            if axis != 1:
                return EncodedKernel(
                    parts, lambda v, s: per_line(values_of(v), s), shape
                )
            return EncodedKernel(
                parts,
                lambda v, s: ops.cast(values_of(v), compute_dtype),
                shape,
                lambda v, s: ops.divide(1.0, ops.cast(s, compute_dtype)),
            )

        if mode == "int8":
            parts = (self._kernel, self.kernel_scale)
            return encoded(parts, lambda values: values, tuple(self._kernel.shape))

        shape = self._int4_kernel_shape
        output_axis = self._output_axis

        def unpack(packed):
            return quantizers.unpack_int4(packed, shape[output_axis], axis=output_axis)

        if self._int4_block_size is None:
            return encoded((self._kernel, self.kernel_scale), unpack, shape)
        # The block of each row of the contracted axis (Dense's `g_idx`).
        groups = np.arange(shape[axis], dtype="int32") // self._int4_block_size

        def decode(packed, scale, zero):  # scale, zero: (c, blocks, F)
            values = ops.cast(unpack(packed), compute_dtype)
            zero = ops.cast(ops.take(zero, groups, axis=axis), compute_dtype)
            scale = ops.cast(ops.take(scale, groups, axis=axis), compute_dtype)
            return ops.multiply(ops.subtract(values, zero), scale)

        parts = (self._kernel, self.kernel_scale, self.kernel_zero)
        return EncodedKernel(parts, decode, shape)

    def _quantize_inputs(self, inputs):
        """`inputs` quantized to int8 with one abs-max scale per sample, and
        dequantized; the gradient passes through unchanged."""
        if self.inputs_quantizer is None:
            return inputs
        inputs = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
        axes = tuple(range(1, len(inputs.shape)))
        values, scale = self.inputs_quantizer(inputs, axis=axes)
        dequantized = ops.divide(ops.cast(values, inputs.dtype), scale)
        return inputs + ops.stop_gradient(dequantized - inputs)

    def _int8_call(self, inputs, training=None):
        return self.call(self._quantize_inputs(inputs))

    def _int4_call(self, inputs, training=None):
        return self.call(self._quantize_inputs(inputs))

    # ------------------------------------------------------------------
    # Saving
    # ------------------------------------------------------------------

    @property
    def variable_serialization_spec(self):
        """The variables each mode saves, in order (Dense's order)."""
        return {
            None: ["kernel", "bias"],
            "int8": ["kernel", "bias", "kernel_scale"],
            "int4": ["kernel", "bias", "kernel_scale", "kernel_zero"],
        }

    def _saved_variable(self, name):
        if name == "kernel":
            # Merged with the LoRA factors where LoRA is enabled (float).
            return self.kernel if self.quantization_mode is None else self._kernel
        return getattr(self, name)

    def _saved_names(self):
        """The spec's names of the variables this layer has, in its mode."""
        mode = self.quantization_mode
        if mode not in self.variable_serialization_spec:
            raise self._unsupported_mode_error(mode)
        return [
            name
            for name in self.variable_serialization_spec[mode]
            if not (name == "bias" and self.bias is None)
            and not (name == "kernel_zero" and not hasattr(self, "kernel_zero"))
        ]

    def _merged_and_requantized(self):
        """A quantized LoRA layer's saved ``{name: value}`` of its kernel
        variables, as Dense's `_get_kernel_with_merged_lora`: the dequantized
        kernel plus the LoRA delta, quantized again in the layer's mode
        (int4: and block size)."""
        merged = ops.add(
            ops.cast(self._dequantized_kernel(), "float32"), self._lora_delta()
        )
        mode = self.quantization_mode
        block_size = self._int4_block_size if mode == "int4" else None
        values, scale, zero = self._quantized_values(
            merged, mode, self.quantization_config, block_size
        )
        saved = {"kernel": values, "kernel_scale": scale}
        if zero is not None:
            saved["kernel_zero"] = zero
        return saved

    def save_own_variables(self, store):
        if not self.built:
            return
        merged = {}
        if self._quantized_with_lora():
            merged = self._merged_and_requantized()
        for index, name in enumerate(self._saved_names()):
            value = merged[name] if name in merged else self._saved_variable(name)
            store[str(index)] = value

    def load_own_variables(self, store):
        lora_enabled = getattr(self, "lora_enabled", False)
        if not lora_enabled and len(store.keys()) != len(self.weights):
            # Keras' own check (`Layer._check_load_own_variables`, Keras >=
            # 3.12): nothing is half-loaded.
            raise ValueError(
                f"{self._owner}: expected {len(self.weights)} variables, but "
                f"the weights file holds {len(store.keys())} for this layer"
                + ("" if self.built else " (the layer is not built)")
                + ". Was it saved with another configuration (use_bias, "
                "quantization, position_groups)?"
            )
        if not self.built:
            return
        for index, name in enumerate(self._saved_names()):
            variable = self._kernel if name == "kernel" else getattr(self, name)
            variable.assign(store[str(index)])
        if lora_enabled:
            self.lora_kernel_a.assign(ops.zeros(self.lora_kernel_a.shape))
            self.lora_kernel_b.assign(ops.zeros(self.lora_kernel_b.shape))

    def get_config(self):
        return {
            **super().get_config(),
            "quantization_config": serialize_keras_object(self.quantization_config),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["quantization_config"] = deserialize_keras_object(
            config.get("quantization_config")
        )
        return super().from_config(config)
