"""Keras' LoRA API on the locally connected layers: `layer.enable_lora`.

`LocalLoRA` is mixed into `LocalBase`, with the semantics of Keras' `Conv*D`
(`keras/src/layers/convolutional/base_conv.py`): `enable_lora(rank)` freezes
the kernel and adds two trainable float32 factors, the second initialized to
zeros so that the output is unchanged at first; `kernel` returns the kernel
merged with ``(lora_alpha / rank) * delta``; saving stores the merged kernel;
`lora_rank` and `lora_alpha` are constructor arguments and part of the
config (a loaded layer enables LoRA again, with zero factors). A quantized
layer takes LoRA too, and a LoRA-enabled one can be quantized, as Dense
allows (see `_quantization`: the call merges a float kernel, saving stores
the merged kernel requantized).

The factorization of a per-position kernel ``(P, K, filters)``:

    delta[p] = lora_kernel_a @ lora_kernel_b[p]
    lora_kernel_a: (K, rank), shared by every position
    lora_kernel_b: (P, rank, filters), one per position

Every position gets its own update of rank ``rank``, in an input subspace
(of patch features) that all positions share: ``K * rank + P * rank *
filters`` trainable values. Conv's literal analog, ``A (P, K, rank)`` with a
shared ``B (rank, filters)``, would train ``P * K * rank`` values: a layer
with few filters (DeepFace's L4 has 16) would train a quarter of its kernel
at rank 4, when the point of LoRA is to train few. ``(K, rank) @ (P, rank,
filters)`` trains about ``1 / K`` of that (0.3% of L4's kernel at rank 4).
"""

from keras import initializers, ops, quantizers

from keras_localconn import _arguments, _keras_private


class LocalLoRA:
    """`enable_lora`, the `kernel` property and the merged kernel.

    The layer stores its kernel as `_kernel` (the variable), provides
    `_owner`, `kernel_constraint` and `kernel_regularizer`, and its
    constructor sets `lora_rank`, `lora_alpha` and `lora_enabled` (False).
    """

    @property
    def kernel(self):
        """The kernel; merged with the LoRA factors where LoRA is enabled.

        As Dense's: the int8 values once quantized to int8 (int4: unpacked).
        """
        if not self.built:
            raise AttributeError("You must build the layer before accessing `kernel`.")
        kernel = self._kernel
        if self.quantization_mode == "int4":
            axis = self._output_axis
            length = self._int4_kernel_shape[axis]
            kernel = quantizers.unpack_int4(kernel, length, axis=axis)
        if self.lora_enabled:
            kernel = ops.cast(ops.add(kernel, self._lora_delta()), self.compute_dtype)
        return kernel

    def _lora_delta(self):
        """``(lora_alpha / lora_rank) * A @ B[p]`` for every position p."""
        delta = ops.einsum("kr,prf->pkf", self.lora_kernel_a, self.lora_kernel_b)
        return (self.lora_alpha / self.lora_rank) * delta

    def _build_lora(self):
        """Enables LoRA at the end of `build` when `lora_rank` was given."""
        if self.lora_rank:
            self.built = True
            self.enable_lora(self.lora_rank, lora_alpha=self.lora_alpha)

    def enable_lora(
        self,
        rank,
        lora_alpha=None,
        a_initializer="he_uniform",
        b_initializer="zeros",
    ):
        """Freezes the kernel and adds trainable low-rank factors (see the
        module for their shapes); the output is unchanged until they train."""
        owner = self._owner
        if self.kernel_constraint:
            raise ValueError(
                f"{owner}: Lora is incompatible with kernel constraints. "
                "In order to enable lora on this layer, remove the "
                "`kernel_constraint` argument."
            )
        if not self.built:
            raise ValueError(
                f"{owner}: Cannot enable lora on a layer that isn't yet built."
            )
        if self.lora_enabled:
            raise ValueError(
                f"{owner}: lora is already enabled. This can only be done once "
                "per layer."
            )
        rank = _arguments.standardize_positive_int(rank, "rank", owner)
        shape = self._kernel.shape
        if self.quantization_mode == "int4":  # stored packed: the logical shape
            shape = self._int4_kernel_shape
        positions, patch_size, filters = shape
        with _keras_private.unlocked_tracker(self):
            # float32 factors, as Keras': no underflow or overflow while they
            # train; the merged kernel takes the compute dtype.
            self.lora_kernel_a = self.add_weight(
                name="lora_kernel_a",
                shape=(patch_size, rank),
                initializer=initializers.get(a_initializer),
                dtype="float32",
                regularizer=self.kernel_regularizer,
            )
            self.lora_kernel_b = self.add_weight(
                name="lora_kernel_b",
                shape=(positions, rank, filters),
                initializer=initializers.get(b_initializer),
                dtype="float32",
                regularizer=self.kernel_regularizer,
            )
            self._kernel.trainable = False
        self.lora_enabled = True
        self.lora_rank = rank
        self.lora_alpha = lora_alpha if lora_alpha is not None else rank

    def get_config(self):
        config = super().get_config()
        if self.lora_rank:
            config["lora_rank"] = self.lora_rank
            config["lora_alpha"] = self.lora_alpha
        return config
