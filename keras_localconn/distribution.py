"""Layouts for `keras.distribution`: shard locally connected kernels by position.

The kernel of a locally connected layer is ``(P, K, filters)``: one
``(K, filters)`` matrix per output position, ``P`` times the weights of the
matching convolution. Its leading *positions* axis is the natural one to shard:
each device then holds the filters of ``P / n`` output positions, and the
matmul that applies them, batched over positions, splits along that axis with
no communication inside the contraction. The transposed layers' kernels
``(P, K, channels)`` have one matrix per *input* position and shard the same
way (their scatter-add into the output then gathers across devices). A layer
with `position_groups` has one matrix per group, ``(T, K, filters)``, and
shards over its groups.

`positions_layout_map` writes those layouts into a `keras.distribution.LayoutMap`
for `keras.distribution.ModelParallel`. It uses only `keras` (no backend import);
Keras 3.15 implements `ModelParallel` on JAX only.
"""

import re

from keras.distribution import DeviceMesh, LayoutMap
from keras.layers import Layer

from keras_localconn import _keras_private
from keras_localconn.layers import BaseLocallyConnected, BaseLocallyConnectedTranspose

__all__ = ["DEFAULT_NAME_PATTERN", "positions_layout_map"]

#: Matches the layer part of the variable paths of the automatically named
#: layers: ``locally_connected2d``, ``functional/locally_connected1d_3``,
#: ``locally_connected2d_transpose``, ...
DEFAULT_NAME_PATTERN = r"(?:.*/)?locally_connected[123]d(?:_transpose)?(?:_\d+)?"


def positions_layout_map(
    mesh_or_layout_map: DeviceMesh | LayoutMap,
    model: Layer | None = None,
    *,
    axis_name: str = "model",
    name_pattern: str | None = None,
) -> LayoutMap:
    """A `LayoutMap` that shards locally connected kernels over their positions.

    The kernel ``(P, K, filters)`` of each selected layer is laid out as
    ``(axis_name, None, None)``: its positions axis is split over the device
    mesh axis `axis_name`, the rest replicated. Pass the result to
    `keras.distribution.ModelParallel` and create the model under that
    distribution: layouts are applied when the variables are created.

    Two ways to select the layers:

    - **From a built model** (`model` given): every `LocallyConnected1D`,
      `2D` or `3D` and every `LocallyConnected1DTranspose`, `2DTranspose` or
      `3DTranspose` inside it (nested models, wrappers such as
      `keras.layers.TimeDistributed` and custom layers included) whose path matches
      `name_pattern` (all of them if None). The entries are keyed by the exact
      variable paths, which take precedence over regex keys already in the
      map. The shapes are known, so the helper checks them: a kernel whose
      ``P`` the mesh axis does not divide is a `ValueError`, and the bias
      ``(*out, filters)`` is sharded over its first axis where the mesh axis
      divides it and replicated otherwise. Create the distributed model with
      the same variable paths: explicit layer names, or the same construction
      after `keras.backend.clear_session()` (which restarts automatic names).
    - **From a name pattern** (`model` None): one regex entry,
      ``f"^(?:{name_pattern})/kernel$"``, usable before any model exists
      (anchored, so that `LayoutMap`'s ``re.search`` selects the same paths
      as the full match made with a model). Without a model the layer
      classes are unknown: any kernel whose layer path matches is sharded. The
      biases are left replicated (their sizes are unknown here, and each is
      ``K`` times smaller than its kernel). A kernel whose ``P`` the mesh axis
      does not divide fails when it is created.

    Args:
        mesh_or_layout_map: A `keras.distribution.DeviceMesh`, for a new
            `LayoutMap`, or a `LayoutMap` to add the entries to (its mesh
            is used).
        model: A built Keras model or layer, or None.
        axis_name: The mesh axis that splits the positions axis.
        name_pattern: A regex that must fully match the layer part of a
            variable path (the path without ``/kernel``). Defaults to all
            locally connected layers with a model, and to
            `DEFAULT_NAME_PATTERN` (automatically named layers) without one.

    Returns:
        The `LayoutMap` (the one passed in, if any), with the new entries.

    Raises:
        ValueError: `axis_name` is not an axis of the mesh; `model` is not
            built, holds no matching locally connected layer, or holds one
            whose positions the mesh axis does not divide.

    Example:

    >>> import keras
    >>> from keras.distribution import DeviceMesh
    >>> from keras_localconn import LocallyConnected2D
    >>> from keras_localconn.distribution import positions_layout_map
    >>> model = keras.Sequential(
    ...     [keras.Input((6, 6, 2)), LocallyConnected2D(4, 3, name="lc")],
    ...     name="net",
    ... )
    >>> mesh = DeviceMesh((2, 4), ("batch", "model"), [f"d{i}" for i in range(8)])
    >>> layout_map = positions_layout_map(mesh, model)
    >>> {path: layout_map[path].axes for path in layout_map}
    {'net/lc/kernel': ('model', None, None), 'net/lc/bias': ('model', None, None)}
    >>> # Then: keras.distribution.ModelParallel(layout_map=layout_map,
    >>> #     batch_dim_name="batch"), and build the model in its scope.
    """
    if isinstance(mesh_or_layout_map, LayoutMap):
        layout_map = mesh_or_layout_map
    elif isinstance(mesh_or_layout_map, DeviceMesh):
        layout_map = LayoutMap(mesh_or_layout_map)
    else:
        raise ValueError(
            "positions_layout_map: the first argument must be a "
            "keras.distribution.DeviceMesh or LayoutMap. Received: "
            f"{mesh_or_layout_map!r}"
        )
    mesh = layout_map.device_mesh
    if mesh is None or axis_name not in mesh.axis_names:
        raise ValueError(
            f"positions_layout_map: `axis_name` must be an axis of the device "
            f"mesh {tuple(mesh.axis_names) if mesh is not None else ()}. "
            f"Received: axis_name={axis_name!r}"
        )
    axis_size = mesh.shape[list(mesh.axis_names).index(axis_name)]

    if model is None:
        pattern = DEFAULT_NAME_PATTERN if name_pattern is None else name_pattern
        layout_map[_kernel_path_regex(pattern)] = (axis_name, None, None)
        return layout_map

    selected = [
        layer
        for layer in _locally_connected_layers(model)
        if name_pattern is None
        or re.fullmatch(name_pattern, _layer_path(layer._kernel))
    ]
    if not selected:
        raise ValueError(
            f"positions_layout_map: found no built locally connected layer in "
            f"{model.name!r}"
            + (f" matching name_pattern={name_pattern!r}" if name_pattern else "")
            + ". Build the model first (give it a `keras.Input` or call it)."
        )
    for layer in selected:
        kernel = layer._kernel  # the stored variable (LoRA's merge is not one)
        num_positions = kernel.shape[0]
        if num_positions % axis_size:
            raise ValueError(
                f"positions_layout_map: layer {layer.name!r} has {num_positions} "
                f"{_positions_kind(layer)} (kernel shape "
                f"{tuple(kernel.shape)}), "
                f"which the mesh axis {axis_name!r} of size {axis_size} does "
                f"not divide. Change the mesh or the layer's output shape, or "
                f"leave the layer out with `name_pattern`."
            )
        layout_map[kernel.path] = (axis_name, None, None)
        bias = layer.bias
        if bias is not None and bias.shape[0] % axis_size == 0:
            layout_map[bias.path] = (axis_name, *(None,) * (len(bias.shape) - 1))
    return layout_map


def _positions_kind(layer):
    """What the kernel's leading axis counts: output or input positions, or
    position groups."""
    if isinstance(layer, BaseLocallyConnectedTranspose):
        return "input positions"
    if layer.position_groups is not None:
        return "position groups"
    return "output positions"


def _kernel_path_regex(name_pattern):
    """A `LayoutMap` key selecting the kernels whose layer path fully matches.

    `LayoutMap` looks regex keys up with `re.search`, which matches anywhere
    in the path; the anchors make it a full match.
    """
    return f"^(?:{name_pattern})/kernel$"


def _layer_path(variable):
    return variable.path.rsplit("/", 1)[0]


def _locally_connected_layers(model):
    """The built locally connected layers in `model`, itself included, once
    each: in nested models, wrappers and custom layers too."""
    return [
        layer
        for layer in (model, *_keras_private.sublayers(model))
        if isinstance(layer, (BaseLocallyConnected, BaseLocallyConnectedTranspose))
        and layer.built
    ]
