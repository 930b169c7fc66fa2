"""Reading a Keras 2 model saved as a TensorFlow SavedModel directory.

`model.save(path)` wrote this format by default in TensorFlow 2.0-2.15 (and
`save_format="tf"` later). It holds three things this module reads:

- `keras_metadata.pb` (or, from TensorFlow before 2.5, each object's
  `user_object.metadata` in `saved_model.pb`): one JSON document per Keras
  object, indexed by its node id in the object graph. The model's own
  document carries `model_config` and `training_config`, the same
  dictionaries a full-model `.h5` file holds as attributes.
- `variables/variables.*`: a TensorFlow checkpoint. Its object graph
  (`_CHECKPOINTABLE_OBJECT_GRAPH`) has the same node ids as the SavedModel's
  and names each object's children: a model's `layer-<i>` children are
  `model.layers` in order, and each layer's `keras_api` child lists its
  `trainable_variables` and `non_trainable_variables` (children `0`, `1`,
  ...), the two lists whose concatenation Keras 2's `.h5` format stores
  for the layer, nested layers included.

TensorFlow is needed to read the checkpoint; it is imported only here, when
a SavedModel is read. Errors are `ValueError`s that describe the content;
the entry points prefix them with the path.
"""

import json
import os

from keras_localconn.legacy._hdf5 import StoredLayer

_METADATA_FILE = "keras_metadata.pb"
_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def is_savedmodel(path):
    """Whether `path` is a directory holding a TensorFlow SavedModel."""
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name))
        for name in ("saved_model.pb", "saved_model.pbtxt")
    )


def read_savedmodel(path: str) -> tuple[dict, dict | None, dict]:
    """The Keras 2 model config, training config and weights of a SavedModel.

    Args:
        path: a directory written by Keras 2's `model.save(path)` (the
            TensorFlow SavedModel format).

    Returns:
        `(model_config, training_config, stored)`: `model_config` as a Keras 2
        full-model `.h5` file's `model_config` attribute holds it (`class_name`
        and `config`); `training_config` likewise, or None if the model was
        not compiled; `stored` maps each top-level layer's name, in
        `model.layers` order, to a `StoredLayer` holding the layer's
        `trainable_weights + non_trainable_weights` (nested models, wrappers
        and user layers included), as `_hdf5.read_weights` gives them for the
        same model's `.h5` file. Layers without weights are left out.

    Raises:
        ImportError: if TensorFlow is not installed.
        ValueError: if `path` is not a SavedModel, was not written by Keras,
            or its metadata or variables cannot be read.
    """
    if not is_savedmodel(path):
        raise ValueError(
            "not a TensorFlow SavedModel directory (no saved_model.pb), so not "
            "a Keras 2 model saved with `model.save(path)`."
        )
    tf = _import_tensorflow()
    metadata = _keras_metadata(path)
    root = metadata.get(0, {})
    model_config = root.get("model_config", {})
    if "config" not in model_config:
        raise ValueError(
            f"the SavedModel holds a Keras {root.get('class_name', 'object')} "
            f"without a model config (a layer, or a subclassed model without "
            f"`get_config`?): it cannot be rebuilt from its metadata."
        )
    graph, reader = _read_checkpoint(path, tf)
    stored = {}
    for node_id in _numbered_children(graph, 0, "layer-"):
        variable_ids = _layer_variables(graph, node_id)
        if variable_ids:
            layer_name = metadata.get(node_id, {}).get("name")
            if layer_name is None:
                raise ValueError(
                    f"the Keras metadata has no layer for object {node_id} of "
                    f"the variables' object graph: the two do not match."
                )
            stored[layer_name] = _stored_layer(graph, reader, variable_ids)
    training_config = root.get("training_config")
    return (
        _h5_json_form(model_config),
        None if training_config is None else _h5_json_form(training_config),
        stored,
    )


def _import_tensorflow():
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            "this directory is a TensorFlow SavedModel; reading it needs "
            "TensorFlow (`pip install tensorflow`). Alternatively, where "
            "TensorFlow and tf-keras are installed, load it with "
            "`tf_keras.models.load_model` and save it again as `.h5` "
            "(`model.save('model.h5', save_format='h5')`), which "
            "`keras_localconn.legacy.load_model` reads without TensorFlow."
        ) from error
    return tf


def _keras_metadata(path):
    """{node id: the Keras JSON metadata of that object}; never empty."""
    metadata_file = os.path.join(path, _METADATA_FILE)
    if os.path.isfile(metadata_file):
        with open(metadata_file, "rb") as file:
            nodes = _parse_saved_metadata(file.read())
    else:  # TensorFlow < 2.5 kept the metadata in saved_model.pb
        nodes = _metadata_in_saved_model(path)
    if not nodes:
        raise ValueError(
            "a TensorFlow SavedModel without Keras metadata: it was not written "
            "by Keras' `model.save` (by `tf.saved_model.save`?), so it holds "
            "no model config and cannot be imported as a Keras model."
        )
    try:
        return {node_id: json.loads(text) for node_id, text in nodes}
    except json.JSONDecodeError as error:
        raise ValueError(f"the Keras metadata is not JSON: {error}") from error


def _parse_saved_metadata(data):
    """[(node id, metadata JSON)] from the bytes of keras_metadata.pb.

    The message is Keras' `SavedMetadata`; its class is declared here from
    the field numbers, because its generated module ships with tf-keras
    (not needed here) or inside TensorFlow's private packages.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from google.protobuf.message import DecodeError

    fields = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="keras_localconn_saved_metadata.proto",
        package="keras_localconn",
        syntax="proto3",
    )
    saved_object = file.message_type.add(name="SavedObject")
    for name, number, kind in (
        ("node_id", 2, fields.TYPE_INT32),
        ("node_path", 3, fields.TYPE_STRING),
        ("identifier", 4, fields.TYPE_STRING),
        ("metadata", 5, fields.TYPE_STRING),
    ):
        saved_object.field.add(
            name=name, number=number, type=kind, label=fields.LABEL_OPTIONAL
        )
    file.message_type.add(name="SavedMetadata").field.add(
        name="nodes",
        number=1,
        type=fields.TYPE_MESSAGE,
        label=fields.LABEL_REPEATED,
        type_name=".keras_localconn.SavedObject",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    saved_metadata = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("keras_localconn.SavedMetadata")
    )()
    try:
        saved_metadata.ParseFromString(data)
    except DecodeError as error:
        raise ValueError(f"{_METADATA_FILE} cannot be read: {error}") from error
    return [(node.node_id, node.metadata) for node in saved_metadata.nodes]


def _metadata_in_saved_model(path):
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    binary = os.path.join(path, "saved_model.pb")
    try:
        if os.path.isfile(binary):
            with open(binary, "rb") as file:
                saved_model.ParseFromString(file.read())
        else:
            with open(os.path.join(path, "saved_model.pbtxt")) as file:
                text_format.Parse(file.read(), saved_model)
    except (DecodeError, text_format.ParseError) as error:
        raise ValueError(f"saved_model.pb cannot be read: {error}") from error
    if not saved_model.meta_graphs:
        return []
    return [
        (node_id, node.user_object.metadata)
        for node_id, node in enumerate(
            saved_model.meta_graphs[0].object_graph_def.nodes
        )
        if node.WhichOneof("kind") == "user_object"
        and node.user_object.identifier.startswith("_tf_keras")
        and node.user_object.metadata
    ]


def _read_checkpoint(path, tf):
    """(the checkpoint's object graph, a reader of its tensors)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    prefix = os.path.join(path, "variables", "variables")
    if not os.path.isfile(prefix + ".index"):
        raise ValueError("the SavedModel has no variables (variables/variables.index).")
    try:
        reader = tf.train.load_checkpoint(prefix)
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor(_GRAPH_KEY))
    except Exception as error:  # noqa: BLE001 - TensorFlow raises many kinds
        raise ValueError(
            f"could not read the variables (truncated or corrupt?): {error}"
        ) from error
    return graph, reader


def _child(graph, node_id, local_name):
    """The id of `node_id`'s child named `local_name`, or None."""
    for child in graph.nodes[node_id].children:
        if child.local_name == local_name:
            return child.node_id
    return None


def _numbered_children(graph, node_id, prefix=""):
    """Ids of the children named `<prefix>0`, `<prefix>1`, ..., in that order."""
    numbered = {}
    for child in graph.nodes[node_id].children:
        number = child.local_name[len(prefix) :]
        if child.local_name.startswith(prefix) and number.isdigit():
            numbered[int(number)] = child.node_id
    return [numbered[number] for number in sorted(numbered)]


def _layer_variables(graph, node_id):
    """Ids of a layer's variables: trainable, then non-trainable, as `.h5`."""
    # `keras_api` lists both kinds; the layer node itself, only the trainable.
    lists_holder = _child(graph, node_id, "keras_api")
    if lists_holder is None:
        lists_holder = node_id
    variable_ids = []
    for list_name in ("trainable_variables", "non_trainable_variables"):
        list_id = _child(graph, lists_holder, list_name)
        if list_id is not None:
            variable_ids += _numbered_children(graph, list_id)
    return variable_ids


def _stored_layer(graph, reader, variable_ids):
    names, arrays = [], []
    for variable_id in variable_ids:
        value = [
            attribute
            for attribute in graph.nodes[variable_id].attributes
            if attribute.name == "VARIABLE_VALUE"
        ]
        if not value:
            raise ValueError(
                f"object {variable_id} of the variables' object graph, listed "
                f"as a layer's variable, holds no value."
            )
        # `.h5` files name a weight by its TensorFlow tensor name, `<name>:0`.
        names.append(f"{value[0].full_name}:0")
        arrays.append(reader.get_tensor(value[0].checkpoint_key))
    return StoredLayer(names, arrays)


def _h5_json_form(value):
    """`value` as a Keras 2 `.h5` attribute holds it.

    The SavedModel metadata writes tuples and `TensorShape`s as
    `{"class_name": "__tuple__" or "TensorShape", "items": [...]}`, where the
    `.h5` writer wrote plain lists, and marks serialized objects with a
    `shared_object_id`, which `.h5` files never hold: every occurrence keeps
    its whole config, and shared layers are told by the functional graph.
    """
    if isinstance(value, dict):
        if value.get("class_name") in ("__tuple__", "TensorShape") and set(value) == {
            "class_name",
            "items",
        }:
            return _h5_json_form(value["items"])
        return {
            key: _h5_json_form(item)
            for key, item in value.items()
            if not (key == "shared_object_id" and "class_name" in value)
        }
    if isinstance(value, list):
        return [_h5_json_form(item) for item in value]
    return value
