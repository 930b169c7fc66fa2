"""Position groups: output positions that share one kernel.

`position_groups` sits between a convolution (one group: every position
shares the kernel) and a locally connected layer (None: every position has
its own). It is either a **block shape**, an int or N positive ints (the
output positions cut into blocks of that many neighbours per axis, in
row-major block order, partial blocks at the far edges), or a **map**: an
integer array of the output spatial shape whose value at each position is
its group, ``0 .. T-1``, each used.

How the engine computes a grouped call (`Plan`): the positions of a group
become the rows of one matmul with that group's kernel, ``rows x batch``
rows by ``K``. Groups of unequal sizes are cut into *units* of at most
`Plan.per_unit` positions (the largest group where that wastes at most half
the rows, else the mean group size), the last unit of a group padded with
repeats of its first position, whose outputs are dropped: at most twice the
rows of the positions, and at most ``2 * T`` kernels read. The kernel is
never expanded to one matrix per position.
"""

import functools
import math
from typing import NamedTuple

import numpy as np

from keras_localconn import _arguments


def standardize(position_groups, rank, owner):
    """`position_groups` as a layer keeps it: None, a block shape (a tuple of
    `rank` positive ints), or a map (an int numpy array), which is checked
    against the output shape by `group_map`."""
    if position_groups is None:
        return None
    if _arguments.is_int(position_groups):
        return _arguments.standardize_tuple(
            position_groups, rank, "position_groups", owner
        )
    try:
        array = np.asarray(position_groups)
    except (TypeError, ValueError) as error:  # ragged nested lists
        raise ValueError(
            f"{owner}: `position_groups` must be None, a block shape (an int or "
            f"{rank} positive ints) or an integer array of the output spatial "
            f"shape. Received: position_groups={position_groups!r}"
        ) from error
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or array.size == 0
    ):
        raise ValueError(
            f"{owner}: `position_groups` must be None, a block shape (an int or "
            f"{rank} positive ints) or an integer array of the output spatial "
            f"shape. Received: position_groups={position_groups!r} (dtype "
            f"{array.dtype})"
        )
    # A flat run of `rank` positive ints is a block shape; as a map it could
    # only be valid if it held a 0. Beyond 1D a flat run is never a map.
    if array.shape == (rank,) and (array > 0).all():
        return tuple(int(n) for n in array)
    if array.ndim == 1 and rank > 1:
        return _arguments.standardize_tuple(
            tuple(position_groups), rank, "position_groups", owner
        )
    if array.ndim != rank:
        raise ValueError(
            f"{owner}: a `position_groups` map must have one value per output "
            f"position, an array of the {rank}D output spatial shape; a block "
            f"shape is {rank} positive ints. Received an array of shape "
            f"{array.shape}"
        )
    return array.astype("int64")


def group_map(position_groups, output_shape, owner):
    """``(P,)`` the group of every output position (row-major), and T.

    `position_groups` as `standardize` returns it; the map is checked here,
    where the output shape is known.
    """
    output_shape = tuple(output_shape)
    if isinstance(position_groups, tuple):
        grid = [math.ceil(n / b) for n, b in zip(output_shape, position_groups)]
        blocks = np.indices(output_shape) // np.reshape(
            position_groups, (-1,) + (1,) * len(output_shape)
        )
        groups = np.ravel_multi_index(tuple(blocks), grid).reshape(-1)
        return groups, math.prod(grid)
    if position_groups.shape != output_shape:
        raise ValueError(
            f"{owner}: the `position_groups` map must have the output spatial "
            f"shape {output_shape}. Received a map of shape "
            f"{position_groups.shape}"
        )
    groups = position_groups.reshape(-1)
    count = int(groups.max()) + 1 if groups.size else 0
    used = np.bincount(groups[groups >= 0], minlength=count) if count > 0 else []
    if groups.size and (groups.min() < 0 or not np.all(used)):
        missing = np.flatnonzero(np.asarray(used) == 0)[:5].tolist()
        raise ValueError(
            f"{owner}: the `position_groups` map must hold the groups 0 .. T-1, "
            f"each at least once. Received values from {int(groups.min())} to "
            f"{int(groups.max())}"
            + (f", with {missing} unused" if missing else "")
            + "; renumber them, e.g. np.unique(map, return_inverse=True)[1]."
        )
    return groups, count


class Grouping(NamedTuple):
    """The groups of one call's output positions, hashable (a cache key).

    Attributes:
        key: the group of every output position, row-major, as the bytes of
            an int64 array.
        count: T, the number of groups (kernels).
    """

    key: bytes
    count: int

    @property
    def groups(self):
        """``(P,)`` int64: the group of every output position."""
        return np.frombuffer(self.key, dtype="int64")

    def plan(self):
        return _cached_plan(self.key, self.count)


def resolve(position_groups, output_shape, owner):
    """The `Grouping` of `position_groups` (any form the layers take, or a
    `Grouping`) for `output_shape`; None for one kernel per position."""
    if position_groups is None or isinstance(position_groups, Grouping):
        return position_groups
    standardized = standardize(position_groups, len(output_shape), owner)
    groups, count = group_map(standardized, output_shape, owner)
    return Grouping(np.asarray(groups, dtype="int64").tobytes(), count)


def plan_of(grouping, num_positions):
    """The `Plan` of a call: `grouping`'s, or one unit per position."""
    if grouping is None:
        return _ungrouped_plan(num_positions)
    return grouping.plan()


@functools.lru_cache(maxsize=64)
def _ungrouped_plan(num_positions):
    return Plan(1, np.arange(num_positions, dtype="int32"), None, None)


def serialize(position_groups):
    """The config value: None, a list of ints or a nested list."""
    if position_groups is None:
        return None
    if isinstance(position_groups, tuple):
        return list(position_groups)
    return position_groups.tolist()


class Plan(NamedTuple):
    """How a grouped call lays its positions out (see the module docstring).

    Attributes:
        per_unit: positions per unit, the rows of one matmul per batch item.
        slots: ``(units * per_unit,)`` the output position of every row.
        kernels: ``(units,)`` the group (kernel) of every unit, or None
            where units and groups are the same, in order.
        order: ``(P,)`` the row that holds every output position, or None
            where the rows are the positions, in order.
        fill: with `order`, ``(units * per_unit,)`` the output position each
            row's cotangent comes from, ``P`` (a zero) for a padding row.
    """

    per_unit: int
    slots: np.ndarray
    kernels: np.ndarray | None
    order: np.ndarray | None
    fill: np.ndarray | None = None

    @property
    def units(self):
        return self.slots.size // self.per_unit


@functools.lru_cache(maxsize=64)
def _cached_plan(groups_bytes, count):
    groups = np.frombuffer(groups_bytes, dtype="int64")
    num_positions = groups.size
    sizes = np.bincount(groups, minlength=count)
    per_unit = int(sizes.max())
    if count * per_unit > 2 * num_positions:
        per_unit = math.ceil(num_positions / count)
    members = np.argsort(groups, kind="stable")  # positions, group by group
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    units_per_group = -(-sizes // per_unit)
    kernels = np.repeat(np.arange(count), units_per_group)
    # Row r of unit u of group g holds member (u * per_unit + r) of g, or
    # repeats its first member where g has fewer.
    unit_in_group = np.arange(kernels.size) - np.repeat(
        np.cumsum(units_per_group) - units_per_group, units_per_group
    )
    index = unit_in_group[:, None] * per_unit + np.arange(per_unit)
    valid = index < sizes[kernels][:, None]
    member = np.where(valid, index, 0) + starts[kernels][:, None]
    slots = members[member].reshape(-1)
    valid = valid.reshape(-1)
    order = np.empty(num_positions, dtype="int64")
    order[slots[valid]] = np.flatnonzero(valid)
    kernels = None if kernels.size == count else kernels.astype("int32")
    if slots.size == num_positions and np.array_equal(order, np.arange(num_positions)):
        return Plan(per_unit, slots.astype("int32"), kernels, None)
    fill = np.where(valid, slots, num_positions)
    return Plan(
        per_unit,
        slots.astype("int32"),
        kernels,
        order.astype("int32"),
        fill.astype("int32"),
    )
