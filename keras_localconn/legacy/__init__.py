"""Import Keras 2 (tf.keras) models and weights that hold locally connected layers.

Keras 3 dropped `LocallyConnected1D` and `LocallyConnected2D`, so Keras 2
files that use them no longer load. This module reads those files, in every
form Keras 2 saved (`.h5` model or weights, tf-keras' `.keras` archive and
`.weights.h5`, a TensorFlow SavedModel directory, read with TensorFlow), and
rebuilds them from this package's layers, wherever they sit (nested models,
wrappers, user layer classes):

- `load_model(filepath)`: a Keras 2 model -> a Keras 3 model whose
  predictions equal the Keras 2 model's.
- `load_weights(model, filepath)`: Keras 2 weights -> an existing Keras 3
  model built from this package's layers.
- `convert_weights(weights, config, input_shape)`: the NumPy-level conversion
  of one Keras 2 layer's weights, for porting by hand.
- `python -m keras_localconn.legacy OLD NEW.keras`: convert a model file once.

Keras 2 stored a locally connected kernel in one of three layouts, chosen by
the layer's `implementation` argument; all three become this package's layout
(Keras 2's implementation 1). Two Keras 2 behaviours are reproduced rather
than "fixed", so that imported models compute what they computed before:

- `padding="same"` (implementations 2 and 3 only) put `kernel_size // 2`
  zeros before each axis. Keras 3 splits `same` padding like `Conv` does,
  which differs for even kernel sizes and for strides > 1; such a layer is
  given Keras 2's padding as explicit `(before, after)` pairs.
- with `channels_first`, Keras 2 added its `(*out, filters)` bias through a
  raw reshape to `(filters, *out)`, not a transpose; the bias values are
  permuted on import so that each output gets the number Keras 2 added there.
"""

from keras_localconn.legacy._convert import ConvertedWeights, convert_weights
from keras_localconn.legacy._load import load_model, load_weights

__all__ = ["ConvertedWeights", "convert_weights", "load_model", "load_weights"]
