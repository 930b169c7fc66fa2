"""Keras' quantization API on the locally connected layers: `layer.quantize`.

`LocalQuantization` is mixed into `LocalBase`. It follows Keras' `Dense`
(`keras/src/layers/core/dense.py`) name for name: `quantize(mode, config)`
turns the float kernel into an int8 one and sets the dtype policy to
``"int8_from_<policy>"``; `quantized_build` creates the int8 variables
directly when a quantized layer is built (a quantized ``.keras`` file loads
without allocating a float kernel); `_int8_call` is what Keras calls instead
of `call` once the policy is quantized; `variable_serialization_spec`,
`save_own_variables` and `load_own_variables` store the variables in Dense's
order; `quantization_config` is taken and serialized.

The int8 kernel, ``(P, K, filters)``, has one scale per (position, filter):
abs-max over ``K``, as Dense has one per unit (abs-max over its inputs axis).
Keras' convention: ``kernel_int8 = round(kernel * kernel_scale)`` and the
float kernel is ``kernel_int8 / kernel_scale``. The engine takes it as an
`EncodedKernel` and decodes one chunk of positions at a time, so that the
kernel is read in int8; gradients reach the inputs only.

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

from keras import dtype_policies, ops, quantizers
from keras.saving import deserialize_keras_object, serialize_keras_object

# The modes these layers implement; Keras knows more (`float8`, `gptq`,
# `awq`), which they refuse with a NotImplementedError, the error
# `Model.quantize` turns into a warning, so that the rest of a model is
# still quantized.
SUPPORTED_MODES = ("int8",)


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


class LocalQuantization:
    """`quantize`, `quantized_build`, `_int8_call` and their serialization.

    The layer provides `_kernel` (its stored kernel), `_owner`, `bias`,
    `call` (which computes with `_engine_kernel()`), and, from
    `LocalLoRA`, `lora_enabled` and `kernel` (merged with LoRA).
    """

    # The modes a layer family implements (the transposed layers set theirs).
    _quantization_modes = SUPPORTED_MODES

    def __init__(self, *args, quantization_config=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.quantization_config = quantization_config
        self.inputs_quantizer = None

    # ------------------------------------------------------------------
    # quantize
    # ------------------------------------------------------------------

    def _unsupported_mode_error(self, mode):
        if not self._quantization_modes:
            supported = f"{type(self).__name__} cannot be quantized yet."
        else:
            supported = f"Supported modes: {self._quantization_modes}."
        return NotImplementedError(
            f"{self._owner}: quantization mode {mode!r} is not supported. "
            f"{supported} Received: mode={mode!r}"
        )

    def quantize(self, mode=None, type_check=True, config=None):
        """Quantizes the kernel in place: `mode` "int8" (see the module).

        Keras' wrapper has already checked that the layer is built, not
        quantized yet, and that int8 is not asked for under a float16
        compute dtype; `config` is an `Int8QuantizationConfig` (with
        ``activation_quantizer=None``: weight-only).
        """
        if type_check and not type(self).__module__.startswith("keras_localconn."):
            # Dense refuses its subclasses: a subclass may compute otherwise.
            raise self._not_implemented_error(self.quantize)
        if mode not in self._quantization_modes:
            raise self._unsupported_mode_error(mode)
        if getattr(self, "lora_enabled", False):
            raise NotImplementedError(
                f"{self._owner}: a layer with LoRA enabled cannot be quantized. "
                f"Save and load the model (which merges the LoRA factors into "
                f"the kernel, and keeps `lora_rank`), or quantize before "
                f"`enable_lora`."
            )
        self.quantization_config = config
        kernel_shape = tuple(self._kernel.shape)
        values, scale = self._quantize_kernel(
            ops.convert_to_tensor(self._kernel), config
        )
        del self._kernel
        self.quantized_build(kernel_shape, mode, config)
        self._kernel.assign(values)
        self.kernel_scale.assign(scale)
        if self.dtype_policy.quantization_mode is None:
            self.dtype_policy = dtype_policies.get(
                f"{mode}_from_{self.dtype_policy.name}"
            )

    def _quantize_kernel(self, kernel, config):
        """``(int8 values (P, K, F), scale (P, F))``: abs-max over ``K``."""
        quantizer = _weight_quantizer(config, quantizers.AbsMaxQuantizer())
        values, scale = quantizer(kernel, axis=1, to_numpy=True)
        expected = (kernel.shape[0], 1, kernel.shape[2])
        if tuple(scale.shape) != expected:
            raise ValueError(
                f"{self._owner}: the weight quantizer must give one scale per "
                f"(position, filter), of shape {expected}, when called with "
                f"axis=1 (K) on the kernel of shape {tuple(kernel.shape)}. "
                f"Received a scale of shape {tuple(scale.shape)} from {quantizer!r}"
            )
        return values, ops.squeeze(scale, axis=1)

    def quantized_build(self, kernel_shape, mode, config=None):
        """The quantized variables of a kernel of shape `kernel_shape`."""
        if mode == "int8":
            self._int8_build(kernel_shape, config)
        else:
            raise self._unsupported_mode_error(mode)
        self._is_quantized = True

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
            shape=(kernel_shape[0], kernel_shape[-1]),
            initializer="ones",
            trainable=False,
        )

    # ------------------------------------------------------------------
    # call
    # ------------------------------------------------------------------

    def _engine_kernel(self):
        """What `call` hands the engine: the (merged) float kernel, or the
        int8 kernel and its scale as an `EncodedKernel`."""
        if self.quantization_mode is None:
            return self.kernel
        from keras_localconn._local_conv import EncodedKernel

        compute_dtype = self.compute_dtype

        def decode(values, scale):  # (c, K, F) int8, (c, F)
            return ops.divide(
                ops.cast(values, compute_dtype),
                ops.expand_dims(ops.cast(scale, compute_dtype), 1),
            )

        return EncodedKernel(
            (self._kernel, self.kernel_scale), decode, tuple(self._kernel.shape)
        )

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

    # ------------------------------------------------------------------
    # Saving
    # ------------------------------------------------------------------

    @property
    def variable_serialization_spec(self):
        """The variables each mode saves, in order (Dense's order)."""
        return {
            None: ["kernel", "bias"],
            "int8": ["kernel", "bias", "kernel_scale"],
        }

    def _saved_variable(self, name):
        if name == "kernel":
            # Merged with the LoRA factors where LoRA is enabled (float).
            return self.kernel if self.quantization_mode is None else self._kernel
        return getattr(self, name)

    def save_own_variables(self, store):
        if not self.built:
            return
        mode = self.quantization_mode
        if mode not in self.variable_serialization_spec:
            raise self._unsupported_mode_error(mode)
        names = [
            name
            for name in self.variable_serialization_spec[mode]
            if not (name == "bias" and self.bias is None)
        ]
        for index, name in enumerate(names):
            store[str(index)] = self._saved_variable(name)

    def load_own_variables(self, store):
        lora_enabled = getattr(self, "lora_enabled", False)
        if not lora_enabled:
            self._check_load_own_variables(store)
        if not self.built:
            return
        mode = self.quantization_mode
        if mode not in self.variable_serialization_spec:
            raise self._unsupported_mode_error(mode)
        names = [
            name
            for name in self.variable_serialization_spec[mode]
            if not (name == "bias" and self.bias is None)
        ]
        for index, name in enumerate(names):
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
