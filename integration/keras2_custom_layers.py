"""Keras 3 ports of the user layer classes in the Keras 2 fixtures.

`make_keras2_fixtures.py` writes models (`custom_*`, `genomic` under
`keras2_fixtures/formats/`) that call user layers defined with tf-keras. These
are the same classes as a user would write them after porting to Keras 3:
the same names, constructor arguments and attribute names, holding
`keras_localconn.LocallyConnected1D`. Tests pass them as `custom_objects`
(or build weights-only targets from them); they are also registered under the
package name "fixtures", as the Keras 2 classes were.
"""

import keras

from keras_localconn import LocallyConnected1D


@keras.saving.register_keras_serializable(package="fixtures")
class LocalBlock(keras.layers.Layer):
    """The user's own `same` padding: ZeroPadding1D, then LocallyConnected1D.

    Args:
        filters: int, the number of output channels.
        kernel_size: int, the window length; the input is padded with
            `(kernel_size - 1) // 2` zeros before and `kernel_size // 2`
            after, so the output has as many steps as the input.
        implementation: 1, 2 or 3, passed on to `LocallyConnected1D` (the
            Keras 2 argument, kept so that Keras 2 configs load).
        data_format: `"channels_last"` or `"channels_first"`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Input shape:
        `(batch, steps, channels)`, or `(batch, channels, steps)` with
        `channels_first`.

    Output shape:
        `(batch, steps, filters)`, or `(batch, filters, steps)`.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        implementation=1,
        data_format="channels_last",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.implementation = implementation
        self.data_format = data_format
        self.zero_padding = keras.layers.ZeroPadding1D(
            ((kernel_size - 1) // 2, kernel_size // 2)
        )
        # ZeroPadding1D pads axis 1 only: channels_first swaps around it.
        self.swap_steps_and_channels = keras.layers.Permute((2, 1))
        self.locally_connected = LocallyConnected1D(
            filters,
            kernel_size,
            implementation=implementation,
            data_format=data_format,
        )

    def call(self, inputs):
        if self.data_format == "channels_first":
            padded = self.swap_steps_and_channels(
                self.zero_padding(self.swap_steps_and_channels(inputs))
            )
        else:
            padded = self.zero_padding(inputs)
        return self.locally_connected(padded)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "implementation": self.implementation,
            "data_format": self.data_format,
        }


@keras.saving.register_keras_serializable(package="fixtures")
class ResidualLocalBlock(LocalBlock):
    """A `LocalBlock` whose input is added to its output.

    The genomic-prediction block: `filters` must equal the input's channels.
    """

    def call(self, inputs):
        return inputs + super().call(inputs)


CUSTOM_OBJECTS = {"LocalBlock": LocalBlock, "ResidualLocalBlock": ResidualLocalBlock}
