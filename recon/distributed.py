"""Slice-parallel sampling over several processes, one per GPU, with ``torch.distributed``.

``torchrun --nproc-per-node N recon_CBCT.py ...`` (or ``recon_MRI_ZSR.py``) starts N processes;
:func:`session` joins them into one process group (NCCL on CUDA, gloo on CPU). Every rank runs the
whole reconstruction on the whole volume, except two parts. The network: :class:`DistributedDenoiser`
has each rank denoise its contiguous block of slices and all-gathers the blocks, so that the
data-consistency step and the noise draw see the whole volume on every rank. The cone-beam
projector inside data consistency, on GPU: :func:`view_parallel` gives each rank a block of the
views, and every adjoint all-reduces the ranks' exact fixed-point sums. Every rank draws its noise
from its own generator seeded with the same seed, so each slice gets exactly the noise of the
single-process run, and N processes give bitwise the volume of one where every network call sees
the same slices (``--slice-batch`` dividing each rank's block) and, on the CPU, each process
uses the same number of threads (torchrun sets OMP_NUM_THREADS=1). The run routine meets this module
through :func:`parallel` (the sampler's denoiser and operator), :class:`RankZero` (the one sink of
its outputs, which writes on rank 0 only), and :func:`session` and :func:`check_peers`, which keep
the ranks in step.

A failure on one rank ends every rank with that rank's error: each synchronisation point starts
with :func:`check_peers`, an all-gather of one status flag per rank, and a rank that raises
reports its error through the same collective from :func:`session`, so the ranks never wait on
mismatched collectives. A rank that dies without raising (killed, segfault) is left to the
launcher: torchrun ends the other ranks, and a collective that outlives ``timeout`` fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist

from recon.results import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)

# NVLink multicast stays off: on shared machines a program that uses it can take the host's GPUs
# out of service for everyone; the user's own settings win.
MULTICAST_OFF = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}

BACKENDS = {"cuda": "nccl", "cpu": "gloo"}
"""device type -> torch.distributed backend."""

DEFAULT_TIMEOUT = timedelta(minutes=30)
"""How long a collective may wait for the slowest rank (first-call compilation included)."""

Denoise = Callable[[torch.Tensor, Any], torch.Tensor]


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a launch, as torchrun's environment says.

    Args:
        rank: global rank, 0 .. world_size - 1 (``RANK``).
        world_size: number of processes (``WORLD_SIZE``); 1 when not launched by torchrun.
        local_rank: rank on this host (``LOCAL_RANK``): the index of the GPU this process uses.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes results and logs (rank 0)."""
        return self.rank == 0


class PeerFailure(RuntimeError):
    """Another rank of the process group failed; the message names the rank and its error.

    Args:
        rank: the failing rank (the lowest one, if several failed).
        error: ``"<ExceptionType>: <message>"`` of its error.
        remote_traceback: the formatted traceback on that rank.
    """

    def __init__(self, rank: int, error: str, remote_traceback: str = ""):
        super().__init__(f"rank {rank} failed: {error}")
        self.rank = rank
        self.error = error
        self.remote_traceback = remote_traceback


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r}: an integer is accepted") from None


def launch_from_env(environ: Optional[Mapping[str, str]] = None) -> Launch:
    """This process's :class:`Launch` from ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.

    Args:
        environ: the environment to read (default: ``os.environ``); without ``WORLD_SIZE`` the
            process runs alone.
    """
    environ = os.environ if environ is None else environ
    world_size = _env_int(environ, "WORLD_SIZE", 1)
    rank = _env_int(environ, "RANK", 0)
    local_rank = _env_int(environ, "LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            f"RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}: "
            "WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0 are accepted"
        )
    return Launch(rank, world_size, local_rank)


def cuda_index(gpu: int, count: int, launch: Optional[Launch] = None) -> int:
    """The CUDA device index this process uses: ``gpu`` alone, the local rank under torchrun.

    Args:
        gpu: the ``--gpu`` option (must stay 0 under torchrun, which picks one GPU per process).
        count: number of visible CUDA devices.
        launch: this process's launch (default: :func:`launch_from_env`).
    """
    launch = launch_from_env() if launch is None else launch
    if launch.world_size == 1:
        if not 0 <= gpu < count:
            raise ValueError(
                f"--gpu {gpu}: this machine has {count} CUDA device(s); accepted: 0..{count - 1}"
            )
        return gpu
    if gpu != 0:
        raise ValueError(
            f"--gpu {gpu}: under torchrun each process uses the GPU of its LOCAL_RANK; "
            "accepted: --gpu 0 (choose the GPUs with CUDA_VISIBLE_DEVICES)"
        )
    if launch.local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK {launch.local_rank}: this machine has {count} CUDA device(s); "
            f"accepted: --nproc-per-node <= {count}"
        )
    return launch.local_rank


def is_active() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Whether this process is rank 0 (always true for a single process)."""
    return not is_active() or dist.get_rank() == 0


def _start_group(launch: Launch, device: torch.device, timeout: timedelta) -> None:
    if device.type not in BACKENDS:
        raise ValueError(f"device {device}: torchrun runs on {', '.join(BACKENDS)} devices")
    for name, value in MULTICAST_OFF.items():
        os.environ.setdefault(name, value)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        BACKENDS[device.type], rank=launch.rank, world_size=launch.world_size, timeout=timeout
    )


@contextlib.contextmanager
def session(device: torch.device, timeout: timedelta = DEFAULT_TIMEOUT) -> Iterator[Launch]:
    """Run the block as one rank of a torchrun launch; a single process runs it unchanged.

    With ``WORLD_SIZE`` > 1 and no process group yet, this sets NVLink multicast off (unless
    set), selects the local GPU, starts the group (NCCL for a CUDA ``device``, gloo for the CPU)
    and ends it after the block. An exception in the block is reported to every other rank (see
    :func:`check_peers`) and re-raised; a :class:`PeerFailure` passes through. A block that ends
    normally waits until every rank has ended its block, so that no rank leaves while another is
    failing. Sessions nest, each adding one synchronisation at its end on every rank: an outer
    one that keeps the group while its block prints the error of an inner one lets every rank
    finish its report before any rank exits (torchrun stops the other ranks as soon as one exits
    with an error).

    Args:
        device: this process's compute device (``cuda:<local rank>`` under torchrun).
        timeout: longest wait of one collective for the slowest rank.

    Yields:
        This process's :class:`Launch`.
    """
    launch = launch_from_env()
    owner = launch.world_size > 1 and not is_active()
    if owner:
        _start_group(launch, torch.device(device), timeout)
    try:
        yield launch
        check_peers()
    except Exception as err:
        _settle(err)
        raise
    finally:
        if owner:
            dist.destroy_process_group()


def _settle(error: Exception) -> None:
    """The one synchronisation of a session's end when ``error`` ends it, the same count on every rank.

    A new error of this rank is reported; a new :class:`PeerFailure` was raised by this level's
    synchronisation already; an error that an inner session settled joins a plain closing one.
    """
    if not is_active():
        return
    if isinstance(error, PeerFailure) and not reported(error):
        error.reported_to_peers = True
        return
    # This rank's own error is what the user needs, even if the report cannot get through.
    with contextlib.suppress(RuntimeError):
        check_peers(None if reported(error) else error)
        error.reported_to_peers = True


def reported(error: BaseException) -> bool:
    """Whether every rank knows of ``error`` (a rank's own error then reaches rank 0, which prints it)."""
    return getattr(error, "reported_to_peers", False)


def _describe(error: BaseException) -> Tuple[str, str]:
    summary = " ".join(f"{type(error).__name__}: {error}".split())
    return summary, "".join(traceback.format_exception(type(error), error, error.__traceback__))


def _status_device() -> torch.device:
    """Where the status flags live: NCCL moves CUDA tensors only, gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_peers(error: Optional[BaseException] = None) -> None:
    """Synchronisation point: every rank says whether it failed; raise if another rank did.

    Every rank must reach the same sequence of calls. A rank that failed passes its ``error``
    (then this returns, and the caller re-raises it); the others raise :class:`PeerFailure` with
    the lowest failing rank's error and log that rank's traceback. Does nothing without a
    process group.

    Args:
        error: this rank's exception, or None when it is doing well.
    """
    if not is_active():
        return
    world_size = dist.get_world_size()
    status = torch.tensor([error is not None], dtype=torch.int32, device=_status_device())
    flags = [torch.empty_like(status) for _ in range(world_size)]
    dist.all_gather(flags, status)
    failed = [rank for rank, flag in enumerate(torch.cat(flags).tolist()) if flag]
    if not failed:
        return
    reports: List[Optional[Tuple[str, str]]] = [None] * world_size
    dist.all_gather_object(reports, None if error is None else _describe(error))
    if error is None:
        summary, remote_traceback = reports[failed[0]]
        log.debug("traceback on rank %d:\n%s", failed[0], remote_traceback)
        raise PeerFailure(failed[0], summary, remote_traceback)


def slice_blocks(num_slices: int, world_size: int) -> List[Tuple[int, int]]:
    """Contiguous ``(start, stop)`` blocks of slices, one per rank, sizes differing by at most one.

    The first ``num_slices % world_size`` ranks get one slice more; with fewer slices than ranks
    the last ranks get empty blocks.
    """
    if num_slices < 0 or world_size < 1:
        raise ValueError(
            f"slice_blocks: need num_slices >= 0 and world_size >= 1, got {num_slices}, {world_size}"
        )
    base, extra = divmod(num_slices, world_size)
    bounds = [rank * base + min(rank, extra) for rank in range(world_size + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class DistributedDenoiser:
    """A denoiser run slice-parallel: each rank denoises its block, every rank gets the whole stack.

    Every rank calls it with the same slice stack ``x`` [N, C, H, W]; rank r runs the wrapped
    denoiser on its block ``slice_blocks(N, world_size)[r]`` only, and the blocks are all-gathered
    (padded to the longest block) into the denoised stack, identical on every rank. Each call
    starts with :func:`check_peers`, so a rank that failed ends the others.

    Args:
        denoiser: ``D(x, sigma) -> x0`` for a slice stack (``models.Denoiser`` or any callable
            that returns a tensor shaped, typed and placed like its input); :meth:`score` needs
            ``denoiser.score``.
        group: the process group (default: the whole world).
    """

    def __init__(self, denoiser: Denoise, group: Optional[dist.ProcessGroup] = None):
        if not callable(denoiser):
            raise TypeError(f"DistributedDenoiser: denoiser must be callable, got {type(denoiser).__name__}")
        self.denoiser = denoiser
        self.group = group

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Denoised slices x0 [N, C, H, W] of the noisy stack x at noise std sigma, on every rank."""
        return self._run(self.denoiser, x, sigma)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The score [N, C, H, W] of the noisy stack x, on every rank."""
        return self._run(self.denoiser.score, x, sigma)

    def _run(self, fn: Denoise, x: torch.Tensor, sigma) -> torch.Tensor:
        if x.dim() != 4 or x.shape[0] == 0:
            raise ValueError(
                "DistributedDenoiser: x must be a non-empty slice stack [N, C, H, W], "
                f"got shape {tuple(x.shape)}"
            )
        rank = dist.get_rank(self.group)
        world_size = dist.get_world_size(self.group)
        blocks = slice_blocks(x.shape[0], world_size)
        longest = blocks[0][1] - blocks[0][0]
        block = x[blocks[rank][0] : blocks[rank][1]]
        local = fn(block, sigma) if block.shape[0] > 0 else block
        if local.shape != block.shape or local.dtype != x.dtype or local.device != x.device:
            raise TypeError(
                f"DistributedDenoiser: the denoiser returned {local.dtype} {tuple(local.shape)} on "
                f"{local.device} for {x.dtype} {tuple(block.shape)} on {x.device}; "
                "an output shaped, typed and placed like its input is accepted"
            )
        if block.shape[0] < longest:
            local = torch.cat([local, x.new_zeros((longest - block.shape[0],) + tuple(x.shape[1:]))])
        check_peers()
        gathered = x.new_empty((world_size * longest,) + tuple(x.shape[1:]))
        dist.all_gather(list(gathered.split(longest)), local.contiguous(), group=self.group)
        if x.shape[0] % world_size == 0:
            return gathered
        return torch.cat([gathered[r * longest : r * longest + b - a] for r, (a, b) in enumerate(blocks)])


def slice_parallel(denoiser: Denoise) -> Denoise:
    """``denoiser`` wrapped in a :class:`DistributedDenoiser` when a process group runs, else itself."""
    return DistributedDenoiser(denoiser) if is_active() else denoiser


def _all_reduce(t: torch.Tensor, how: str) -> None:
    check_peers()
    dist.all_reduce(t, op=dist.ReduceOp.SUM if how == "sum" else dist.ReduceOp.MAX)


def view_parallel(op, y: torch.Tensor) -> Tuple[Any, torch.Tensor]:
    """``(op, y)`` for the data-consistency step, its views split over the ranks where that is exact.

    Where the operator can split its views (``view_block``) and adds them exactly
    (``sums_views_exactly``: the cone-beam Triton adjoint's fixed-point sums), rank r keeps block r
    of the views and of ``y`` (``slice_blocks`` over the views), and every adjoint all-reduces over
    the ranks: the result is bitwise the single-process one, for 1/N of the projector work per
    rank. Elsewhere (CPU, the ZSR operator, fewer views than ranks) every rank keeps the whole
    operator, which gives the single-process result too, at the single-process cost. The first
    dimension of ``y`` must index the operator's views.
    """
    if not is_active() or not hasattr(op, "view_block") or not op.sums_views_exactly(y):
        return op, y
    world_size = dist.get_world_size()
    if y.shape[0] < world_size:
        return op, y
    start, stop = slice_blocks(y.shape[0], world_size)[dist.get_rank()]
    return op.view_block(start, stop, _all_reduce), y[start:stop]


def parallel(denoiser: Denoise, op, y: torch.Tensor) -> Tuple[Denoise, Any, torch.Tensor]:
    """The sampler's denoiser, operator and measurement with their work shared over the ranks.

    The denoiser runs slice-parallel (:func:`slice_parallel`) and the operator's views are split
    where that is exact (:func:`view_parallel`); a single process gets all three back unchanged.
    """
    return (slice_parallel(denoiser), *view_parallel(op, y))


def _skip(*args, **kwargs) -> None:
    """What a write on a rank other than 0 does: nothing."""


class RankZero:
    """A results writer that writes on rank 0 only: the one sink of a run's outputs.

    Rank 0 builds the writer with ``make_writer()`` and every method call goes to it; the other
    ranks build nothing and every method call does nothing, so that every rank runs the same code.

    Args:
        make_writer: builds the writer (e.g. a ``recon.results.RunFolder``), on rank 0 only.
    """

    def __init__(self, make_writer: Callable[[], Any]):
        self.writer = make_writer() if is_main_process() else None

    @property
    def path(self):
        """The writer's folder on rank 0; None elsewhere."""
        return None if self.writer is None else self.writer.path

    def __getattr__(self, name: str):
        # Only names this class lacks arrive here; "writer" itself is looked up in the instance.
        writer = self.__dict__.get("writer")
        return _skip if writer is None else getattr(writer, name)


@contextlib.contextmanager
def silent_logging() -> Iterator[None]:
    """Drop the project's log records and Python warnings while the block runs.

    Ranks other than 0 run under it: rank 0 reports for every rank, which run the same code.
    """
    handler = logging.NullHandler()
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.propagate = propagate
        log.removeHandler(handler)
