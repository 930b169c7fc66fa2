"""What the machine reports that the schedule adapts to: its cores' caches.

Read once per process, from what the operating system publishes, never from
a table of measured machines: the size of one core's level-2 cache
(``/sys/devices/system/cpu/cpu0/cache`` on Linux, ``sysconf`` elsewhere), its
share of the last-level cache (the largest level reported, over the cores
that share it), the cores this process may use, and whether Keras computes
on an accelerator instead of the CPU. Both cache sizes can be overridden
with an environment variable, to check the rule on a machine that reports
other sizes (``KERAS_LOCALCONN_CACHE_BYTES``,
``KERAS_LOCALCONN_LAST_LEVEL_CACHE_BYTES``: one core's share).
"""

import functools
import os
import pathlib

from keras_localconn import _keras_private

# Where the operating system reports no level-2 cache: the smallest per-core
# L2 of current x86 and Arm server cores (1 MiB for AMD Zen 4, 2 MiB for
# Intel Sapphire Rapids, 1 MiB for Neoverse V1/V2).
FALLBACK_CACHE_BYTES = 2**20
CACHE_ENV = "KERAS_LOCALCONN_CACHE_BYTES"
LAST_LEVEL_ENV = "KERAS_LOCALCONN_LAST_LEVEL_CACHE_BYTES"
_SYSFS_CACHE = pathlib.Path("/sys/devices/system/cpu/cpu0/cache")


def _parse_size(text):
    """Bytes of a sysfs cache size: ``"1024K"``, ``"32M"`` or a plain number."""
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def _sysfs_data_caches(root):
    """``(level, folder)`` of each of cpu0's data (or unified) caches that
    sysfs describes under `root`."""
    for index in sorted(root.glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified"):
            yield level, index


def _sysfs_level2_bytes(root=_SYSFS_CACHE):
    """The data (or unified) level-2 cache of cpu0 in bytes, or None."""
    for level, index in _sysfs_data_caches(root):
        if level == 2:
            try:
                return _parse_size((index / "size").read_text())
            except (OSError, ValueError):
                continue
    return None


def _cpu_count(text):
    """CPUs in a sysfs list such as ``"0-3,8,10-11"``."""
    count = 0
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def _sysfs_last_level_share(root=_SYSFS_CACHE):
    """One core's share of cpu0's last-level data (or unified) cache in
    bytes: its size over the CPUs that share it; None where the OS reports
    no level above 2."""
    shares = {}
    for level, index in _sysfs_data_caches(root):
        if level <= 2:
            continue
        try:
            size = _parse_size((index / "size").read_text())
            sharing = _cpu_count((index / "shared_cpu_list").read_text())
        except (OSError, ValueError):
            continue
        shares[level] = size // max(1, sharing)
    return shares[max(shares)] if shares else None


def _sysconf_level2_bytes():
    try:
        size = os.sysconf("SC_LEVEL2_CACHE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return size if size > 0 else None


@functools.cache
def core_cache_bytes():
    """Bytes of one core's level-2 cache: `CACHE_ENV`, else what the OS says."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return _parse_size(override)
    return _sysfs_level2_bytes() or _sysconf_level2_bytes() or FALLBACK_CACHE_BYTES


def usable_cores():
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@functools.cache
def cache_bytes():
    """The level-2 cache of the cores that compute: one core's, times the
    cores this process may use (the backends split a batched matmul over
    them, each core's share in its own cache)."""
    return core_cache_bytes() * usable_cores()


@functools.cache
def last_level_cache_bytes():
    """The last-level cache the cores that compute may fill: one core's
    share (`LAST_LEVEL_ENV`, else what the OS says) times the cores this
    process may use; their level-2 caches (`cache_bytes`) where the OS
    reports no higher level, or a smaller one."""
    override = os.environ.get(LAST_LEVEL_ENV)
    share = _parse_size(override) if override else _sysfs_last_level_share()
    if share is None:
        return cache_bytes()
    return max(share * usable_cores(), cache_bytes())


@functools.cache
def on_accelerator():
    """Whether Keras computes on a GPU or TPU (then no CPU cache applies)."""
    return _keras_private.computes_on_accelerator()
