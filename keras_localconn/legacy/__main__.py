"""Convert a Keras 2 model file to a Keras 3 `.keras` file, once.

    python -m keras_localconn.legacy OLD NEW.keras
    keras-localconn-convert OLD NEW.keras      # the same, as a console script

OLD is any form Keras 2 saved a whole model in: an `.h5` file, a tf-keras
`.keras` archive or a SavedModel directory (which needs TensorFlow). Each
converted locally connected layer is printed with the Keras 2 implementation
its kernel was stored in and the padding it was given; progress goes to
standard error. On failure the error's message is printed and the exit status
is 1; nothing is written.

Your own layer classes (ported to Keras 3) come from modules named with
`--custom-objects MODULE` (repeatable): every class in the module is passed
to `load_model` under its name.
"""

import argparse
import importlib
import inspect
import os
import sys
import time


def _custom_objects(module_names):
    objects = {}
    for name in module_names:
        module = importlib.import_module(name)
        objects.update(
            {
                key: value
                for key, value in vars(module).items()
                if inspect.isclass(value)
            }
        )
    return objects


def _padding_text(padding):
    return "unchanged" if padding is None else f"Keras 2's, explicit: {padding}"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_localconn.legacy",
        description="Convert a Keras 2 model (.h5, .keras, SavedModel) that holds "
        "locally connected layers to a Keras 3 .keras file.",
    )
    parser.add_argument("source", help="the Keras 2 file or SavedModel directory")
    parser.add_argument("target", help="the Keras 3 file to write (.keras)")
    parser.add_argument(
        "--custom-objects",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE and pass its classes as custom_objects (repeatable)",
    )
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="do not compile the model with the file's training configuration",
    )
    parser.add_argument(
        "--unsafe",
        action="store_true",
        help="allow Lambda layers' code to be deserialized (safe_mode=False)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace TARGET if it exists"
    )
    args = parser.parse_args(argv)
    if not args.target.endswith(".keras"):
        parser.error(f"TARGET must end in .keras, received {args.target!r}")
    if os.path.exists(args.target) and not args.overwrite:
        parser.error(f"{args.target} exists; pass --overwrite to replace it")

    started = time.monotonic()

    def progress(message):
        print(f"[{time.monotonic() - started:6.1f} s] {message}", file=sys.stderr)

    from keras_localconn.legacy import _formats, _load  # after argparse: fast --help

    try:
        path = _formats.existing_path(args.source)
        with _load._about_file(path):
            model, record = _load.import_model(
                path,
                _custom_objects(args.custom_objects),
                not args.no_compile,
                not args.unsafe,
                progress=progress,
            )
        progress(f"writing {args.target}")
        model.save(args.target)
    except (OSError, ValueError, TypeError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    converted = record.converted if record is not None else []
    for layer, implementation, padding in converted:
        where = layer.weights[0].path.rsplit("/", 1)[0] if layer.weights else layer.name
        print(
            f"{where}: {type(layer).__name__}, implementation {implementation}, "
            f"padding {_padding_text(padding)}"
        )
    print(
        f"{args.source} -> {args.target}: {len(converted)} locally connected "
        f"layer(s) converted, {model.count_params():,} parameters"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
