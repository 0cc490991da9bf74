"""Small memory helpers kept apart from the loops that use them (calibrator, OOM guard).

Three kinds of things live here, each tiny and testable on its own:

* classifiers: :func:`is_oom_error` says whether an exception is an out-of-memory error;
* probes: :class:`DeviceMemory` is what the calibrator needs from a device (a name, its total
  memory, the peak *reserved* since a reset -- what is not free -- and the peak *allocated*, whose
  difference is fragmentation). :class:`CudaMemory` reads the CUDA caching allocator; tests
  subclass it with a simulated device, so the real search code runs on CPU unchanged;
  :func:`allocator_config` / :func:`expandable_segments` say how the caching allocator is set up;
* rank agreement: :func:`all_ranks_max` (element-wise MAX over ranks, identity without a process
  group), so every rank takes the same branch of a retry loop;
* :class:`TrainingSnapshot`: what a measuring step changes (weights, gradients, optimizer state,
  RNG), kept in host memory and restored bit for bit.

>>> import torch
>>> is_oom_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
True
>>> is_oom_error(ValueError("out of memory"))
False
"""

from __future__ import annotations

import gc
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["is_oom_error", "gathers_parameters", "DeviceMemory", "CudaMemory", "device_memory", "no_cuda_reason",
           "TrainingSnapshot", "all_ranks_max", "world_size", "format_bytes", "allocator_config",
           "expandable_segments"]

# Messages of allocators that do not raise torch.OutOfMemoryError (older torch, cuBLAS/cuDNN
# workspaces, MPS, the CPU allocator). Same list as accelerate's should_reduce_batch_size, minus
# cuDNN's NOT_SUPPORTED, which is not about memory and must not shrink a batch.
_OOM_MESSAGES = (
    "CUDA out of memory",
    "CUDA error: out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "HIP out of memory",
    "XPU out of memory",
    "MPS backend out of memory",
    "DefaultCPUAllocator: can't allocate memory",
)


def is_oom_error(error: BaseException) -> bool:
    """Whether ``error`` is a device (or host allocator) out-of-memory error worth retrying smaller."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    if isinstance(error, RuntimeError) and error.args and isinstance(error.args[0], str):
        return any(message in error.args[0] for message in _OOM_MESSAGES)
    return False


def gathers_parameters(model: torch.nn.Module) -> bool:
    """Whether ``model`` is sharded (FSDP, DeepSpeed): its forward all-gathers parameters from every
    rank, so one rank failing part-way leaves the others waiting in a collective."""
    # FSDP2 makes a class per wrapped module (FSDPLlamaForCausalLM, ...): hence the prefix.
    names = {type(m).__name__ for m in model.modules()}
    return bool(names & {"FullyShardedDataParallel", "DeepSpeedEngine"}) or any(n.startswith("FSDP") for n in names)


def allocator_config() -> str:
    """The caching allocator's settings as the user gave them (``PYTORCH_ALLOC_CONF``, or its older
    name ``PYTORCH_CUDA_ALLOC_CONF``), whitespace removed; ``""`` for the defaults.

    >>> os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"; allocator_config()
    'expandable_segments:True'
    >>> del os.environ["PYTORCH_CUDA_ALLOC_CONF"]
    """
    conf = os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or ""
    return "".join(conf.split())


def expandable_segments(conf: Optional[str] = None) -> bool:
    """Whether ``conf`` (default: :func:`allocator_config`) turns on expandable segments.

    >>> expandable_segments("max_split_size_mb:128,expandable_segments:True")
    True
    """
    conf = allocator_config() if conf is None else conf
    for option in conf.split(","):
        key, _, value = option.partition(":")
        if key.strip() == "expandable_segments":
            return value.strip().lower() in ("true", "1")
    return False


def format_bytes(n: Union[int, float]) -> str:
    """``format_bytes(3 * 2**30) == '3.00 GiB'``."""
    return f"{n / 2**30:.2f} GiB"


class DeviceMemory:
    """What the calibrator and the OOM guard read from a device's memory.

    ``peak_bytes()`` is the most memory held since the last ``reset_peak()``: memory the allocator
    reserved plus memory held outside it (CUDA context, NCCL buffers), i.e. what is *not free* on
    the device. Subclass this for another backend or for a simulation.
    """

    name: str = "device"
    total_bytes: int = 0

    def reset_peak(self) -> None:
        """Release cached blocks and start a new peak measurement."""
        raise NotImplementedError

    def peak_bytes(self) -> int:
        """Peak bytes *reserved* (not free) since :meth:`reset_peak`: what must stay under the headroom."""
        raise NotImplementedError

    def peak_allocated_bytes(self) -> int:
        """Peak bytes held by live tensors since :meth:`reset_peak` (reported; reserved minus this is
        fragmentation). A device that does not tell them apart returns :meth:`peak_bytes`."""
        return self.peak_bytes()

    def release(self) -> None:
        """Free what can be freed after an out-of-memory error (garbage, cached blocks)."""
        gc.collect()

    def cap(self, max_bytes: int) -> None:
        """Keep what is not free (reserved plus held outside the allocator) at or under ``max_bytes``
        from now on: the allocator returns cached blocks rather than grow past it."""
        raise NotImplementedError(f"{type(self).__name__} cannot cap its allocator; pass enforce_headroom=False")

    def describe(self) -> dict:
        """What identifies this device in a cache key."""
        return {"name": self.name, "total_bytes": int(self.total_bytes)}


class CudaMemory(DeviceMemory):
    """:class:`DeviceMemory` of one CUDA device, read from PyTorch's caching allocator."""

    def __init__(self, device: Union[int, str, torch.device, None] = None) -> None:
        device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        props = torch.cuda.get_device_properties(device)
        self.name = props.name
        self.total_bytes = int(props.total_memory)
        self._outside = 0

    def _held_outside_allocator(self) -> int:
        free, total = torch.cuda.mem_get_info(self.device)
        return max(0, (total - free) - torch.cuda.memory_reserved(self.device))

    def reset_peak(self) -> None:
        self.release()
        torch.cuda.reset_peak_memory_stats(self.device)
        # The CUDA context and NCCL buffers are not in the allocator's counters but are not free
        # either; counting them keeps "leave headroom free" true of the device, not of PyTorch.
        self._outside = self._held_outside_allocator()

    def peak_bytes(self) -> int:
        # Reserved, not allocated: cached blocks the allocator cannot reuse for the next shape are
        # not free either, and a step fails when reserved + outside reaches the device's total.
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_reserved(self.device)) + self._outside

    def peak_allocated_bytes(self) -> int:
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device)) + self._outside

    def describe(self) -> dict:
        # Fragmentation, hence the reserved peaks the budget is chosen from, depends on the allocator.
        backend = torch.cuda.get_allocator_backend() if hasattr(torch.cuda, "get_allocator_backend") else "native"
        return {**super().describe(), "allocator": {"backend": backend, "conf": allocator_config()}}

    def release(self) -> None:
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()

    def cap(self, max_bytes: int) -> None:
        # The per-process fraction bounds what the allocator reserves; the context and NCCL buffers
        # held outside it now come off first. What is allocated outside PyTorch later (e.g. NCCL
        # communicators made at the first collective) is not covered: reserve_bytes is for that.
        outside = self._held_outside_allocator()
        fraction = (max_bytes - outside) / self.total_bytes
        if not 0 < fraction <= 1:
            raise ValueError(f"cannot cap {self.name} at {format_bytes(max_bytes)}: "
                             f"{format_bytes(outside)} is already held outside PyTorch")
        torch.cuda.set_per_process_memory_fraction(fraction, self.device)


def no_cuda_reason(device: Union[str, torch.device]) -> str:
    """Why there is no CUDA device to measure on, in words a user can act on."""
    device = torch.device(device)
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return (f"this PyTorch build ({torch.__version__}) is CPU-only (torch.version.cuda is None); "
                f"install a CUDA build of torch to calibrate, or pass a token budget yourself")
    if not torch.cuda.is_available():
        return ("PyTorch was built with CUDA but sees no GPU (torch.cuda.is_available() is False: check the "
                "driver and CUDA_VISIBLE_DEVICES), or pass a token budget yourself")
    return (f"the model is on {device}, not on a CUDA device; move it first (model.to('cuda')), or pass "
            f"a token budget yourself")


def device_memory(device: Union[str, torch.device]) -> DeviceMemory:
    """The :class:`DeviceMemory` of ``device``; raises ``RuntimeError`` with the reason when it is not CUDA."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return CudaMemory(device)
    raise RuntimeError(f"warppack measures memory on a CUDA device, but {no_cuda_reason(device)}")


def world_size() -> int:
    """Processes in the default torch.distributed group (1 when none is initialised)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_ranks_max(values: Sequence[float]) -> List[float]:
    """Element-wise MAX of ``values`` over all ranks (unchanged without a process group).

    Used so that every rank takes the same branch of a search or retry: a decision made from the
    reduced values is the same everywhere. MIN is MAX of negated values. float64 keeps byte counts
    exact (below 2**53).
    """
    if world_size() == 1:
        return [float(v) for v in values]
    dist = torch.distributed
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.cpu().tolist()


class TrainingSnapshot:
    """Everything a training step changes, copied to host memory; restored bit for bit on exit.

    Parameters and buffers (in place, so optimizers keep their references), gradients, the
    optimizer's state and hyperparameters, every module's training mode (a peft wrapper in training
    mode over a base in eval mode stays so) and the Python/NumPy/torch/CUDA RNG
    states. Host memory keeps the device free for what is being measured.

    >>> model = torch.nn.Linear(2, 2)
    >>> before = model.weight.clone()
    >>> with TrainingSnapshot(model):
    ...     _ = model.weight.data.add_(1)
    >>> bool(torch.equal(model.weight, before))
    True
    """

    def __init__(self, model: torch.nn.Module, optimizer=None) -> None:
        import random

        import numpy as np

        self.model = model
        self.modes = [(module, module.training) for module in model.modules()]
        self.tensors = [(t, _host(t)) for t in list(model.parameters()) + list(model.buffers())]
        self.grads: List[Tuple[torch.Tensor, Optional[torch.Tensor]]] = [
            (p, None if p.grad is None else _host(p.grad)) for p in model.parameters()]
        self.optimizer: Any = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the real one
        self.state: Dict[Any, Dict[str, Tuple[Any, Any]]] = {}
        self.groups: List[Dict[str, Any]] = []
        if self.optimizer is not None:
            self.state = {p: {k: (_host(v), v.device) if torch.is_tensor(v) else (_deepcopy(v), None)
                              for k, v in s.items()} for p, s in self.optimizer.state.items()}
            self.groups = [{k: _deepcopy(v) for k, v in g.items() if k != "params"}
                           for g in self.optimizer.param_groups]
        self.rng = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                    torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)

    def __enter__(self) -> "TrainingSnapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    @torch.no_grad()
    def restore(self) -> None:
        import random

        import numpy as np

        for tensor, copy in self.tensors:
            tensor.copy_(copy)
        for p, grad in self.grads:
            p.grad = None if grad is None else grad.to(p.device)
        self.restore_optimizer()
        random.setstate(self.rng[0])
        np.random.set_state(self.rng[1])
        torch.set_rng_state(self.rng[2])
        if self.rng[3] is not None:
            torch.cuda.set_rng_state_all(self.rng[3])
        self.model.train(self.modes[0][1])  # through train(), as calibration left it, for models that override it
        for module, training in self.modes:
            module.training = training

    @torch.no_grad()
    def restore_optimizer(self) -> None:
        """Put the optimizer's state and hyperparameters back as they were (state created since is
        dropped): each calibration probe starts, like a training run, from the state it was given."""
        if self.optimizer is None:
            return
        state = self.optimizer.state
        for p in [p for p in state if p not in self.state]:
            del state[p]  # state the probes created (the usual case: calibrate before training)
        for p, entries in self.state.items():
            current = state[p]
            for k in [k for k in current if k not in entries]:
                del current[k]
            for k, (value, device) in entries.items():
                old = current.get(k)
                if device is not None and torch.is_tensor(old) and old.shape == value.shape:
                    old.copy_(value)
                else:
                    current[k] = value.to(device) if device is not None else _deepcopy(value)
        for group, hyper in zip(self.optimizer.param_groups, self.groups):
            for k in [k for k in group if k != "params" and k not in hyper]:
                del group[k]
            group.update({k: _deepcopy(v) for k, v in hyper.items()})


def _host(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


def _deepcopy(value):
    import copy

    return copy.deepcopy(value)
