"""CPU threads of the command on a machine that other work shares.

PyTorch runs each operation on a large tensor as one OpenMP parallel region: thousands of
regions per image. A region ends only when its slowest thread does, and between regions
GNU OpenMP's threads keep spinning on their core (by default for some 300 000 rounds) in
case the next region follows at once. On idle cores that is the fastest. On busy ones it is
the slowest by far: a thread that the kernel has descheduled in favour of another process
stalls every region, while the spinning threads take the cores that the descheduled one
needs. Two settings avoid it, each made only where the user has made no choice of their own:

* :func:`limit_spinning`, before torch is imported: a short spin (``GOMP_SPINCOUNT``), so
  that an idle thread gives its core back soon, unless ``OMP_WAIT_POLICY`` or
  ``GOMP_SPINCOUNT`` is set;
* :func:`use_idle_cpus`, once torch is loaded: no more threads than there are idle CPUs
  (from the number of tasks the kernel has runnable right now), unless ``OMP_NUM_THREADS``
  or ``MKL_NUM_THREADS`` is set.

Only the command calls these, and only when it is the one that loads torch: the library
never changes a program's threads (``torch.set_num_threads`` is that program's choice).
This module imports nothing heavy, so that it can run before torch loads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path

__all__ = ["SPIN_COUNT", "busy_tasks", "idle_cpus", "limit_spinning", "use_idle_cpus"]

#: GNU OpenMP spin rounds before an idle thread sleeps (its default is 300 000): a thirtieth,
#: so that a thread soon gives back a core that other work wants, while the next region,
#: a few microseconds of Python later, still finds it awake.
SPIN_COUNT = 10_000

#: Settings of the user that fix how OpenMP threads wait; any of them keeps ours off.
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
#: Settings of the user that fix the number of threads; any of them keeps ours off.
THREAD_SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_LOADAVG = Path("/proc/loadavg")


def limit_spinning(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set a short OpenMP spin in ``environ`` (the process environment) unless the user set one.

    It takes effect only if called before torch (and with it the OpenMP runtime) loads.

    Returns:
        Whether the setting was made.
    """
    env = os.environ if environ is None else environ
    if any(name in env for name in WAIT_SETTINGS):
        return False
    env["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True


def busy_tasks(samples: int = 5, interval: float = 1e-3, path: Path | None = None) -> int | None:
    """Tasks that the kernel has runnable besides the caller, or ``None`` where unknown.

    Read from the fourth field of ``/proc/loadavg`` (runnable tasks / all tasks, the
    caller included), the least of ``samples`` readings ``interval`` seconds apart, so that
    a task that only passes by is not counted. The one-minute load average would still
    count work that ended a minute ago and miss work that started a second ago.
    """
    least: int | None = None
    for i in range(samples):
        if i:
            time.sleep(interval)
        try:
            running = int((path or _LOADAVG).read_text().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return None
        least = running if least is None else min(least, running)
    return None if least is None else max(least - 1, 0)


def idle_cpus(busy: int | None, cpus: int | None = None) -> int | None:
    """CPUs that ``busy`` runnable tasks leave free (at least 1), ``None`` where unknown."""
    total = os.cpu_count() if cpus is None else cpus
    if busy is None or total is None:
        return None
    return max(1, total - busy)


def use_idle_cpus(
    set_threads: Callable[[int], None],
    current: int,
    *,
    environ: MutableMapping[str, str] | None = None,
    busy: Callable[[], int | None] = busy_tasks,
) -> int:
    """Lower torch's thread count to the idle CPUs unless the user fixed it; return the count.

    Args:
        set_threads: ``torch.set_num_threads``.
        current: ``torch.get_num_threads()``; never raised.
        environ: the process environment.
        busy: counts the other runnable tasks (:func:`busy_tasks`).
    """
    env = os.environ if environ is None else environ
    if any(name in env for name in THREAD_SETTINGS):
        return current
    idle = idle_cpus(busy())
    if idle is None or idle >= current:
        return current
    set_threads(idle)
    return idle
