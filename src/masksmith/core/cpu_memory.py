"""Keep freed tensor memory in the process (glibc): CPU training and inference stop paying the kernel for it.

glibc's malloc hands every block above its mmap threshold (at most 32 MiB) back to the kernel when it is freed, and
maps a fresh one for the next. A network's feature maps at batch 8 are such blocks, allocated and freed by every
layer of every call, and the kernel zero-fills each new page on its first touch. On the EfficientNet-Lite0 U-Net
(1 thread, benchmarks/eager_batch.py) eager inference at 512² ran 1.9 images/s at batch 8 against 3.1 at batch 1
(113,000 page faults an image) and 3.1 at batch 8 with the memory kept; a float32 training step of 8 at 384x256
took 624 ms an image against 444. Batch 1's blocks mostly stay under the threshold: larger batches lost speed per
image. bfloat16 halves the blocks, and its steps barely changed.

keep_freed_memory() sets what jemalloc or tcmalloc users get by preloading them: no mmap for large blocks, freed
memory kept unless more than TRIM_THRESHOLD sits unused at the top of the heap, and one malloc arena so that threads
(the server's batcher, data-loading threads) share the kept memory; a thread's own arena would map and unmap large
blocks regardless. The price: the process keeps its peak heap (a 256x256 float32 training step of 8: 1.57 GiB peak
RSS against 1.36). A process whose malloc the user already configured (MALLOC_* variables, GLIBC_TUNABLES, a
preloaded allocator) or that sets MASKSMITH_SYSTEM_MALLOC=1 is left as it is, as is any C library other than glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt() parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# Free memory above this at the top of the heap still goes back to the system (after a one-off large batch).
TRIM_THRESHOLD = 1 << 30
OPT_OUT = "MASKSMITH_SYSTEM_MALLOC"
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX",
                 "MALLOC_TOP_PAD_")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module doc says, once per process; whether it is tuned."""
    global _applied
    if _applied is None:
        _applied = _tune()
    return _applied


def user_configured_malloc() -> bool:
    """Whether the environment chose malloc's behaviour (MASKSMITH_SYSTEM_MALLOC=1, MALLOC_* variables, glibc's
    malloc tunables) or replaced it (LD_PRELOAD of an allocator)."""
    if os.environ.get(OPT_OUT, "") not in ("", "0"):
        return True
    if any(name in os.environ for name in USER_SETTINGS) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return True
    return "malloc" in os.environ.get("LD_PRELOAD", "")  # jemalloc, tcmalloc, mimalloc


def c_library() -> str:
    """'glibc 2.36' where the C library is glibc, else '' (musl, macOS, Windows)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        return ""


def _tune() -> bool:
    if not sys.platform.startswith("linux") or not c_library().startswith("glibc") or user_configured_malloc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; each setting stands alone.
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, 1))
    return all([mallopt(parameter, value) == 1 for parameter, value in settings])
