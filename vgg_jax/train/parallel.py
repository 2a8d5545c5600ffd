"""Data parallelism on jax.sharding: one mesh with a `data` axis over every device of every process.

Batches are split along `data`; params and optimizer state are replicated (or, with `shard_fc`, the
big fc1/fc2 kernels split across devices). One jitted step serves 1 device and 1,000: a single
device is just a mesh of one. Multi-host: each process passes its own rows to `shard_batch`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vgg_jax.errors import UserError

AXIS = "data"

# XLA:CPU (jaxlib 0.10) gives convolutions to YNNPACK and fuses chains of them into one YNN graph; on
# AVX-512 CPUs XLA's own convolutions run VGG16 1.2-1.6x faster (benchmarks/NOTES.md). Dots stay with
# YNNPACK. Set per compile, on CPU only, and only where this XLA knows the option.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def jit_options(platform: str | None = None, tuned: bool = True) -> dict:
    """Extra `jax.jit` keywords for our steps: CPU_COMPILER_OPTIONS on CPU (unless tuned=False), else nothing."""
    if not tuned or (platform or jax.default_backend()) != "cpu" or not _cpu_options_known():
        return {}
    return {"compiler_options": dict(CPU_COMPILER_OPTIONS)}


@functools.cache
def _cpu_options_known() -> bool:
    try:  # older jax has no `compiler_options`, older XLA no such option: both raise
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(np.float32(0)).compile()
    except Exception:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Topology:
    """Devices and processes a run spans, and this process's share of every global batch."""

    mesh: Mesh
    process_index: int
    process_count: int

    @classmethod
    def current(cls) -> Topology:
        return cls(make_mesh(), jax.process_index(), jax.process_count())

    @property
    def lead(self) -> bool:
        """The first process: the one that writes files and talks."""
        return self.process_index == 0

    def local(self, global_batch: int, what: str) -> int:
        """This process's rows of a global batch (UserError when the batch does not split evenly)."""
        check_batch_size(global_batch, self.mesh, what)
        return global_batch // self.process_count

    def sync(self, name: str) -> None:
        """Waits for every process at the barrier `name` (nothing to wait for in one process)."""
        if self.process_count > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over all (global) devices, or the given ones."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "`batch_size`") -> None:
    """The global batch must split evenly over the devices; say which sizes would."""
    n = mesh.size
    if batch_size % n:
        below, above = batch_size // n * n, (batch_size // n + 1) * n
        options = ", ".join(str(b) for b in (below, above) if b > 0)
        raise UserError(f"{what} {batch_size} does not divide over {n} devices; use a multiple of {n} (e.g. {options})")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shardings_for(tree: Any, mesh: Mesh, shard_fc: bool = False) -> Any:
    """A sharding per leaf of params, a train state or optimizer state: replicated, except (with shard_fc)
    fc1/fc2 kernels, and the optimizer moments mirroring them, split on their output axis."""

    def spec(path, leaf):
        keys = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
        is_fc_kernel = bool(keys) and keys[-1] == "kernel" and any(k in ("fc1", "fc2") for k in keys)
        if shard_fc and is_fc_kernel and np.ndim(leaf) == 2 and np.shape(leaf)[-1] % mesh.size == 0:
            return NamedSharding(mesh, P(None, AXIS))
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(spec, tree)


def put(tree: Any, shardings: Any) -> Any:
    """Host values (identical on every process) -> global jax.Arrays with the given shardings."""

    def one(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, tree, shardings)


def to_host(tree: Any) -> Any:
    """Global arrays -> full numpy arrays on every process (gathers shards held by other processes)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a global batch -> global arrays split along `data` (ids stay on the host)."""
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in batch.items():
        if key == "id":
            out[key] = value
            continue
        value = np.asarray(value)
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out


def prefetch(batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh, size: int = 2) -> Iterator[dict[str, jax.Array]]:
    """Starts each batch's host-to-device transfer `size - 1` steps before the step that uses it.

    Transfers are asynchronous: putting batch k+1 on the devices before yielding batch k lets the
    copy run while step k computes.
    """
    queue: collections.deque = collections.deque()
    iterator = iter(batches)
    for batch in iterator:
        queue.append(shard_batch(batch, mesh))
        if len(queue) >= size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def jit_step(step_fn, state_shardings: Any, frozen_shardings: Any, mesh: Mesh, donate: bool = True, tuned: bool = True):
    """jit with explicit shardings: state and frozen as given, batch split along `data`, metrics replicated."""
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, frozen_shardings, batch_sharding(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=(0,) if donate else (),
        **jit_options(mesh.devices.flat[0].platform, tuned),
    )


def jit_eval(eval_fn, trainable_shardings: Any, frozen_shardings: Any, mesh: Mesh, tuned: bool = True):
    """Sums come back replicated; per-example probabilities stay split along `data`."""
    out = {
        "loss_sum": replicated(mesh),
        "correct": replicated(mesh),
        "count": replicated(mesh),
        "probs": batch_sharding(mesh),
    }
    return jax.jit(
        eval_fn,
        in_shardings=(trainable_shardings, frozen_shardings, batch_sharding(mesh)),
        out_shardings=out,
        **jit_options(mesh.devices.flat[0].platform, tuned),
    )


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order (all rows on one process)."""
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, rows = set(), []
    for s in shards:
        start = s.index[0].start or 0
        if start not in seen:  # replicas of the same rows on other local devices
            seen.add(start)
            rows.append(np.asarray(s.data))
    return np.concatenate(rows)


def init_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """jax.distributed.initialize(); without arguments it auto-detects (SLURM, TPU pods, env variables)."""
    kwargs = {
        k: v
        for k, v in (("coordinator_address", coordinator), ("num_processes", num_processes), ("process_id", process_id))
        if v is not None
    }
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"`distributed`: could not join the job ({str(e).splitlines()[0]})") from None
