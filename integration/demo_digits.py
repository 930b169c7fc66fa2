"""Train `LocallyConnected2D` beside `Conv2D` on scikit-learn's digits.

The main job of the project, run by ``nox -s demo`` (``nox -s demo -- --backend
torch`` for another backend), or directly on the active Keras backend::

    KERAS_BACKEND=jax python integration/demo_digits.py [--output PATH]

Two models that differ only in their first layer, a 3x3 locally connected
layer (its own filters at each of the 6x6 output positions) or a 3x3
convolution (one set of filters shared by all positions), are trained with
the same seed on the 1,797 8x8 digit images that ship inside scikit-learn
(nothing is downloaded). The script prints the test accuracy, parameter count
and training time of both, and writes one PNG figure: the training curves of
both models, and what the unshared weights learned.
"""

import argparse
import os
import time

if __name__ == "__main__":
    # The models are tiny: one thread per op is fastest, and torch's OpenMP
    # threads slow training down 10x when the CPU cores are busy elsewhere.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import keras
import numpy as np

from keras_localconn import LocallyConnected2D

FILTERS = 16
KERNEL_SIZE = 3
NUM_CLASSES = 10
L2 = 1e-3
MODELS = {"LocallyConnected2D": LocallyConnected2D, "Conv2D": keras.layers.Conv2D}
COLORS = {"LocallyConnected2D": "tab:orange", "Conv2D": "tab:blue"}


def load_digits(seed):
    """Train/validation/test splits of the digits, as (8, 8, 1) floats in [0, 1]."""
    # Imported here so that the module imports (for doctest collection) in an
    # environment without the demo's extra packages.
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype("float32")[..., np.newaxis]
    labels = digits.target.astype("int32")
    x_rest, x_test, y_rest, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.15, stratify=y_rest, random_state=seed
    )
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def build_model(name, seed):
    """The shared architecture, with `name`'s layer as the first layer."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            MODELS[name](
                FILTERS,
                KERNEL_SIZE,
                activation="relu",
                # Weight decay lets weights that never see a signal (those
                # reading the blank image borders) fade, so the figure shows
                # where the unshared weights went.
                kernel_regularizer=keras.regularizers.L2(L2),
                name="spatial",
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name=name,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train(name, data, epochs, batch_size, seed):
    """Fit one model; return it with its history, test accuracy and timing."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data
    model = build_model(name, seed)
    print(f"\n=== {name}: {model.count_params():,} parameters ===")
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=batch_size,
        verbose=1,
    )
    seconds = time.perf_counter() - start
    _, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {
        "model": model,
        "history": history.history,
        "seconds": seconds,
        "test_accuracy": float(test_accuracy),
        "params": model.count_params(),
    }


def unshared_weight_maps(layer):
    """What the locally connected kernel learned, as three arrays to draw.

    The kernel is ``(P, K, filters)``: one ``(K, filters)`` matrix per output
    position, ``K`` ordered (kernel row, kernel col, channel). Returns the L2
    norm of each position's matrix on the output grid, the L2 norm of all the
    weights that read each input pixel on the input grid, and one filter's
    3x3 kernels tiled position by position (with 1-pixel gaps).
    """
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    rows, cols = layer.compute_output_shape((None, 8, 8, 1))[1:3]
    k = KERNEL_SIZE
    per_offset = kernel.reshape(rows, cols, k, k, -1, kernel.shape[-1])

    position_norm = np.sqrt((per_offset**2).sum(axis=(2, 3, 4, 5)))

    pixel_energy = np.zeros((rows + k - 1, cols + k - 1))
    offset_energy = (per_offset**2).sum(axis=(4, 5))
    for r in range(rows):
        for c in range(cols):
            pixel_energy[r : r + k, c : c + k] += offset_energy[r, c]

    filter_index = int(np.argmax(np.linalg.norm(kernel, axis=(0, 1))))
    step = k + 1
    mosaic = np.full((rows * step - 1, cols * step - 1), np.nan)
    for r in range(rows):
        for c in range(cols):
            mosaic[r * step : r * step + k, c * step : c * step + k] = per_offset[
                r, c, :, :, 0, filter_index
            ]
    return position_norm, np.sqrt(pixel_energy), (filter_index, mosaic)


def plot(results, x_train, backend, path):
    """Write the one-figure summary to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig = plt.figure(figsize=(15, 8.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.15, 1])

    ax_loss, ax_acc = top.subplots(1, 2)
    for name, result in results.items():
        history = result["history"]
        epochs = np.arange(1, len(history["loss"]) + 1)
        color = COLORS[name]
        ax_loss.plot(epochs, history["loss"], color=color, ls="--", alpha=0.6)
        ax_loss.plot(
            epochs,
            history["val_loss"],
            color=color,
            label=f"{name} ({result['params']:,} parameters, "
            f"{result['seconds']:.0f} s)",
        )
        ax_acc.plot(epochs, history["accuracy"], color=color, ls="--", alpha=0.6)
        ax_acc.plot(
            epochs,
            history["val_accuracy"],
            color=color,
            label=f"{name}: test accuracy {result['test_accuracy']:.1%}",
        )
    ax_loss.set(
        title="Loss (dashed: training, solid: validation)",
        xlabel="epoch",
        ylabel="cross-entropy + L2 penalty",
        yscale="log",
    )
    ax_acc.set(
        title="Accuracy (dashed: training, solid: validation)",
        xlabel="epoch",
        ylabel="accuracy",
        ylim=(0.8, 1.005),
    )
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="best")

    layer = results["LocallyConnected2D"]["model"].get_layer("spatial")
    position_norm, pixel_norm, (filter_index, mosaic) = unshared_weight_maps(layer)
    axes = bottom.subplots(1, 4)
    bottom.suptitle(
        "What the unshared weights of LocallyConnected2D learned "
        "(Conv2D has one 3x3 kernel per filter, the same everywhere)"
    )
    half = KERNEL_SIZE // 2
    rows, cols = position_norm.shape
    panels = [
        (
            x_train[..., 0].std(axis=0),
            "Greys",
            "The data: pixel std over\ntraining images (where digits differ)",
            0,
            None,
        ),
        (
            pixel_norm,
            "viridis",
            "Norm of all weights that read\neach input pixel",
            0,
            None,
        ),
        (
            position_norm,
            "magma",
            "Kernel norm per output position\n(drawn at its receptive field's centre)",
            None,
            (half - 0.5, half + cols - 0.5, half + rows - 0.5, half - 0.5),
        ),
    ]
    for ax, (image, cmap, title, vmin, extent) in zip(axes, panels):
        shown = ax.imshow(image, cmap=cmap, vmin=vmin, extent=extent)
        ax.set(xlim=(-0.5, 7.5), ylim=(7.5, -0.5), xticks=range(8), yticks=range(8))
        ax.set_title(title, fontsize=10)
        bottom.colorbar(shown, ax=ax, shrink=0.85)

    limit = np.nanmax(np.abs(mosaic))
    shown = axes[3].imshow(mosaic, cmap="RdBu_r", vmin=-limit, vmax=limit)
    axes[3].set(xticks=[], yticks=[])
    axes[3].set_title(
        f"Filter {filter_index}: its own 3x3 kernel at\n"
        f"each of the {rows}x{cols} output positions",
        fontsize=10,
    )
    bottom.colorbar(shown, ax=axes[3], shrink=0.85)

    fig.suptitle(
        f"LocallyConnected2D vs Conv2D on scikit-learn digits "
        f"({len(x_train):,} training images, Keras backend: {backend})",
        fontsize=14,
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    backend = keras.backend.backend()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        default=os.path.join("demo_output", f"demo_digits_{backend}.png"),
        help="where to write the PNG figure (default: %(default)s)",
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    data = load_digits(args.seed)
    (x_train, _), (x_val, _), (x_test, _) = data
    print(
        f"Keras {keras.__version__}, backend {backend}; digits: {len(x_train)} "
        f"training, {len(x_val)} validation, {len(x_test)} test images"
    )
    results = {
        name: train(name, data, args.epochs, args.batch_size, args.seed)
        for name in MODELS
    }

    print(f"\n{'model':<20} {'test accuracy':>14} {'parameters':>11} {'training':>9}")
    for name, result in results.items():
        print(
            f"{name:<20} {result['test_accuracy']:>14.2%} {result['params']:>11,} "
            f"{result['seconds']:>8.1f}s"
        )
    plot(results, x_train, backend, args.output)
    print(f"\nFigure written to {os.path.abspath(args.output)}")


if __name__ == "__main__":
    main()
