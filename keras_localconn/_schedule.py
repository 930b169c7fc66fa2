"""How the forward engine computes one call: its `Formulation`, chosen here.

`_local_conv` builds and contracts the patches either all at once or in
chunks of output positions, with input rows of ``(batch, channels)`` or
``(channels, batch)``, looping over the chunks with `keras.ops.map` or a
Python loop; its backward pass (chunked calls only) holds the input-gradient
contributions of a group of chunks at a time and adds them into rows with one
scatter-add where Keras has one (`HAS_SCATTER_ADD`), as `_transpose` adds its
own (`adds_by_scatter`). A `Formulation` names one such choice;
`formulation` derives the default from the static shapes, the backend and
what the machine reports (`_machine`), never from a table of one machine's
timings:

- **chunk**: the patches of one chunk fill the level-2 caches of the cores
  that compute it (one core's share each), so that the matmul reads them
  from cache, not from memory. Where all the patches fit, or weigh less
  than a quarter of the kernel, all positions go at once. On an
  accelerator no CPU cache applies; the one bound left is the memory bound
  below. A quantized kernel's chunks decode their own rows, which with the
  patches fill half the last-level cache instead (`chunk_positions`).
- **memory**: no more patches (or input-gradient contributions) exist at once
  than the kernel holds, nor less than one cache's worth.
- **row layout** and **loop**: what each backend's gather and loop do fast
  (a property of the backend's implementation, the same on every machine:
  docs/performance.md, "How it computes"). A Python loop is unrolled into a
  traced graph, so more than `MAX_UNROLLED` chunks always go through
  `keras.ops.map`, and the graph stays small.

`keras_localconn.ops.formulation(...)` pins any of these choices for the
calls inside it (`pinned`): tests and benchmarks pin a computation that way,
as a user would; nothing here is meant to be patched. A new formulation is
one more choice of `Formulation`, derived in `formulation` beside the
others, and one more branch where `_local_conv.local_conv` dispatches on
its call's plan.
"""

import contextlib
import inspect
import math
import threading
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_localconn import _machine

# The batch size assumed where it is unknown or symbolic (a graph traced or
# exported for any batch size).
ASSUMED_BATCH = 32
# Chunks a Python loop may unroll; beyond, `keras.ops.map` (one loop op).
MAX_UNROLLED = 16
# `keras.ops.scatter_update(..., reduction="add")` (Keras >= 3.14) is the
# backends' native scatter-add (XLA scatter, `tensor_scatter_nd_add`,
# `index_put_(accumulate=True)`): measured the fastest way to add
# contributions into rows under tensorflow, jax and torch. Older Keras has no
# scatter-add that is one op on every backend (torch's `scatter` loops over
# the indices in Python and its `segment_sum` runs 4-6x slower): there the
# forward engine's backward pass adds with a segment sum, and the transposed
# engine gathers each output row's contributions back and sums them.
HAS_SCATTER_ADD = "reduction" in inspect.signature(ops.scatter_update).parameters


class Formulation(NamedTuple):
    """One way to compute a local convolution; see `_local_conv`.

    Attributes:
        chunk: output positions per chunk; None for all positions at once.
        batch_before_channels: input rows of ``(batch, channels)``, else
            ``(channels, batch)``.
        loop_by_map: chunks through `keras.ops.map`, else through a Python
            loop.
        group: chunks whose positions' input-gradient contributions the
            backward pass computes and adds together; None for all.
        scatter_add: the backward pass adds contributions with one
            scatter-add (Keras >= 3.14), else with a segment sum; None (a
            pinned choice only) for what this Keras has, `HAS_SCATTER_ADD`.
        conv: one position group (a shared kernel) computes as
            `keras.ops.conv`, else as any other grouping.
        taps: the call computes tap by tap, without patches (`_taps`),
            else from patches; the choices above are the patches'.
    """

    chunk: int | None = None
    batch_before_channels: bool = True
    loop_by_map: bool = True
    group: int | None = None
    scatter_add: bool | None = None
    conv: bool = True
    taps: bool = False


class _BackendPolicy(NamedTuple):
    batch_before_channels: bool
    loop_by_map: bool
    # A Python loop becomes a traced graph of one copy per chunk, where
    # `keras.ops.map` would be one loop op (torch's `map` is a Python loop).
    unrolls: bool


# torch's gather copies whole rows of contiguous values 2x faster; JAX's
# `map` is one XLA loop, TensorFlow's and torch's loops run op by op.
_POLICIES = {
    "jax": _BackendPolicy(True, True, True),
    "tensorflow": _BackendPolicy(False, False, True),
    "torch": _BackendPolicy(False, False, False),
}
_DEFAULT_POLICY = _BackendPolicy(True, True, True)

# The per-tap formulation (`_taps`) computes a call with one input channel,
# at most `filters` filters and at most `taps` kernel taps. A tap reads one
# strided slice of the input and adds its products into the outputs: no
# patches, which are K times the input, far larger than a small kernel, and
# gathered at a fraction of the memory's rate. What pays depends on whether
# the backend runs a tap as one pass over memory and how many passes a tap
# takes. With one channel each tap's product is one multiply-add per output
# value; with more, a sum over channels adds passes, and the patches' matmul
# wins. XLA fuses the taps' forward pass into one, but not their kernel
# gradient (a batch sum per tap), so training bounds it: up to 4 filters and
# 16 taps. TensorFlow and torch run every op of every tap as its own pass:
# TensorFlow's gather is fast enough that only one filter and up to 16 taps
# pay; torch's is slow enough that 2 filters and 32 taps still do. Properties
# of the backends and of the shape, not of one machine: the crossover
# (`python -m benchmarks.taps`, docs/performance.md) was measured at batch 2
# and 32, 2 to 32 taps and 1 to 8 filters, on CPUs and on a GPU.
_TAPS_LIMITS = {  # backend: (filters, taps) at most
    "jax": (4, 16),
    "tensorflow": (1, 16),
    "torch": (2, 32),
    "numpy": (1, 16),
}

_pinned = threading.local()


@contextlib.contextmanager
def pinned(**choices):
    """Inside the block, `formulation` returns `choices` over its own rule,
    and `adds_by_scatter` the `scatter_add` choice."""
    unknown = set(choices) - set(Formulation._fields)
    if unknown:
        raise TypeError(
            f"keras_localconn.ops.formulation: unknown choice(s) {sorted(unknown)}; "
            f"the choices are {list(Formulation._fields)}."
        )
    if "scatter_add" in choices and choices["scatter_add"] is None:
        choices["scatter_add"] = HAS_SCATTER_ADD
    outer = _pinned_choices()
    _pinned.choices = {**outer, **choices}
    try:
        yield
    finally:
        _pinned.choices = outer


def _pinned_choices():
    return getattr(_pinned, "choices", {})


def adds_by_scatter():
    """Whether contributions are added into rows with one scatter-add (else
    gathered back per row, or summed by segment): the pinned `scatter_add`,
    else `HAS_SCATTER_ADD`. The transposed engine's one choice."""
    return _pinned_choices().get("scatter_add", HAS_SCATTER_ADD)


def _largest_divisor_near(n, target):
    """The largest divisor of `n` in ``[target / 2, target]``: equal chunks,
    where one exists close to the target, need no last chunk that overlaps
    the one before. Else the smallest chunk that covers `n` in as few chunks
    as `target` does, so that the last chunk overlaps the one before by
    fewer units than there are chunks (`target` itself could make it
    recompute almost a whole chunk: 441 units in chunks of 436 overlap by
    431)."""
    for chunk in range(target, -(-target // 2) - 1, -1):
        if n % chunk == 0:
            return chunk
    return -(-n // -(-n // target))


def chunk_positions(
    geo,
    batch,
    itemsize,
    filters,
    cache_bytes,
    *,
    decoded=False,
    units=None,
    per_unit=1,
    last_level_bytes=None,
):
    """Output positions (units) per chunk, or None for all at once.

    `cache_bytes`: the patches of one chunk fill it; None (an accelerator)
    for no cache term. All positions go at once where their patches fit it,
    and where they weigh less than a quarter of the kernel (``batch <
    filters / 4``): their round trip to memory then adds less than half the
    kernel's own traffic, and the loop would cost more than it saves. On an
    accelerator they go at once unless they outweigh the kernel.

    `decoded`: the kernel is stored encoded (`_local_conv.EncodedKernel`)
    and each chunk decodes its own rows: those count with its patches, and
    together they fill half of `last_level_bytes` (the last-level cache of
    the cores that compute, `_machine.last_level_cache_bytes`; `cache_bytes`
    where not given), the other half left to the encoded rows and the
    outputs that stream through it. The decoded rows are written once and
    read once, by the matmul that follows: what matters is that they come
    back from a cache rather than from memory, not that it is the nearest
    one, and fewer, larger chunks spend less time on each chunk's own ops
    (docs/quantization.md, "Speed"). All positions go at once only where
    the whole decoded kernel and the patches fit that half (decoding it
    whole would write, and read back, a float kernel larger than the
    encoded one).

    With position groups, `units` units of `per_unit` positions each share
    a kernel (`_groups.Plan`): a unit weighs ``per_unit`` positions'
    patches and one kernel, and chunks hold whole units.
    """
    units = geo.num_positions if units is None else units
    per_position = geo.patch_size * _known(batch) * per_unit * itemsize
    kernel = units * geo.patch_size * filters * itemsize
    if decoded and cache_bytes is not None:
        per_position += geo.patch_size * filters * itemsize
        budget = (last_level_bytes or cache_bytes) // 2
        if units * per_position <= budget:
            return None
    elif cache_bytes is None:
        if units * per_position <= kernel:
            return None
        budget = kernel
    else:
        patches = units * per_position
        if patches <= cache_bytes or 4 * patches < kernel:
            return None
        budget = cache_bytes
    chunk = max(1, budget // per_position)
    return _largest_divisor_near(units, min(chunk, units))


def backward_group(
    geo, batch, itemsize, filters, chunk, cache_bytes, *, units=None, per_unit=1
):
    """Chunks whose input-gradient contributions are held at once: as many
    as fit in the kernel's bytes (at least one cache's worth); None for all."""
    if chunk is None:
        return None
    units = geo.num_positions if units is None else units
    per_chunk = chunk * geo.patch_size * _known(batch) * per_unit * itemsize
    budget = max(units * geo.patch_size * filters * itemsize, cache_bytes or 0)
    group = max(1, budget // per_chunk)
    return None if group >= math.ceil(units / chunk) else int(group)


def _known(batch):
    if isinstance(batch, (int, np.integer)):
        return int(batch)
    return ASSUMED_BATCH


def per_tap(geo, filters, backend):
    """Whether the per-tap formulation computes a call of `geo` with
    `filters` filters under `backend` (see `_TAPS_LIMITS`)."""
    max_filters, max_taps = _TAPS_LIMITS.get(backend, (1, 16))
    return geo.channels == 1 and filters <= max_filters and geo.taps <= max_taps


def formulation(geo, batch, dtype, filters, *, decoded=False, units=None, per_unit=1):
    """The `Formulation` of one call, under Keras' backend.

    `batch` may be None or symbolic; `dtype` is the inputs' dtype; `decoded`:
    the kernel is decoded chunk by chunk; `units` and `per_unit`: position
    groups' units (`chunk_positions`; None: one per output position).
    Choices pinned with `pinned` replace the rule's; the loop and the
    backward groups follow the chunk, pinned or not.
    """
    choices = _pinned_choices()
    backend = keras.backend.backend()
    policy = _POLICIES.get(backend, _DEFAULT_POLICY)
    itemsize = np.dtype(keras.backend.standardize_dtype(dtype)).itemsize
    cache_bytes = None if _machine.on_accelerator() else _machine.cache_bytes()
    units = geo.num_positions if units is None else units
    shape = dict(units=units, per_unit=per_unit)
    if "chunk" in choices:
        chunk = choices["chunk"]
    else:
        last_level = None
        if decoded and cache_bytes is not None:
            last_level = _machine.last_level_cache_bytes()
        chunk = chunk_positions(
            geo,
            batch,
            itemsize,
            filters,
            cache_bytes,
            decoded=decoded,
            last_level_bytes=last_level,
            **shape,
        )
    many = chunk is not None and math.ceil(units / chunk) > MAX_UNROLLED
    rule = Formulation(
        chunk=chunk,
        batch_before_channels=policy.batch_before_channels,
        loop_by_map=policy.loop_by_map or (many and policy.unrolls),
        group=backward_group(
            geo, batch, itemsize, filters, chunk, cache_bytes, **shape
        ),
        scatter_add=HAS_SCATTER_ADD,
        conv=True,
        taps=per_tap(geo, filters, backend),
    )
    return rule._replace(**choices)
