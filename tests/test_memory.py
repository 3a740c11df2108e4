"""The C library's allocator thresholds (tvdenoise/memory.py)."""

from __future__ import annotations

import os

import pytest

from tvdenoise import memory

ON_GLIBC = hasattr(os, "confstr") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


class _Recorder:
    """A stand-in for ``mallopt`` that records its calls and answers ``result``."""

    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def __call__(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self.result


def test_thresholds_are_pinned_where_the_user_chose_nothing() -> None:
    mallopt = _Recorder()
    assert memory.pin_malloc_thresholds({"GLIBC_TUNABLES": "glibc.cpu.x86_ibt=on"}, mallopt)
    # mmap threshold 32 MiB (M_MMAP_THRESHOLD = -3), trim threshold 64 MiB (M_TRIM_THRESHOLD = -1)
    assert mallopt.calls == [(-3, 32 << 20), (-1, 64 << 20)]


@pytest.mark.parametrize(
    "environ",
    [
        {"TVDENOISE_MALLOC": "0"},
        {"MALLOC_ARENA_MAX": "2"},
        {"MALLOC_TRIM_THRESHOLD_": "1000000"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"},
        {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
        {"LD_PRELOAD": "libtcmalloc_minimal.so.4"},
    ],
)
def test_the_users_allocator_settings_are_kept(environ: dict[str, str]) -> None:
    mallopt = _Recorder()
    assert not memory.pin_malloc_thresholds(environ, mallopt)
    assert mallopt.calls == []


def test_a_refused_setting_is_reported() -> None:
    assert not memory.pin_malloc_thresholds({}, _Recorder(result=0))


@pytest.mark.skipif(not ON_GLIBC, reason="glibc's mallopt only")
def test_glibcs_mallopt_takes_the_thresholds() -> None:
    assert memory.pin_malloc_thresholds({})


@pytest.mark.skipif(ON_GLIBC, reason="elsewhere than glibc")
def test_other_c_libraries_are_left_alone() -> None:
    assert not memory.pin_malloc_thresholds({})
