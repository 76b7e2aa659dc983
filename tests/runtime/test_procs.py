"""Process helpers: a stopped process exits, whatever its libraries left running."""

from __future__ import annotations

import subprocess
import sys
import textwrap

STUBBORN = textwrap.dedent(
    """
    import asyncio
    from cleave.runtime.procs import run_main

    async def stubborn():
        while True:  # swallows every cancellation, as some client libraries' loops do
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

    async def main():
        asyncio.get_running_loop().create_task(stubborn())
        await asyncio.sleep(0)
        return 7

    print("returned", run_main(main(), grace=0.5))
    """
)


def test_a_task_that_ignores_cancellation_does_not_keep_the_process_alive() -> None:
    done = subprocess.run(
        [sys.executable, "-c", STUBBORN], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "returned 7" in done.stdout


def test_the_main_coroutine_s_error_is_raised() -> None:
    code = (
        "import asyncio\nfrom cleave.runtime.procs import run_main\n"
        "async def main():\n    raise ValueError('boom')\n"
        "run_main(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "ValueError: boom" in done.stderr


FREEZE = textwrap.dedent(
    """
    import gc, weakref
    from cleave.runtime.procs import freeze_heap

    class Node:
        pass

    kept = [[i] for i in range(100_000)]  # what a process builds to start
    cycle = Node()
    cycle.me = cycle
    gone = weakref.ref(cycle)
    del cycle  # garbage in a cycle: only the collector frees it
    freeze_heap()
    print("freed", gone() is None)
    print("frozen", gc.get_freeze_count() >= len(kept))
    print("walked", len(gc.get_objects(generation=2)) < 1_000)
    """
)


def test_freeze_heap_frees_garbage_then_hides_the_rest_from_full_collections() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FREEZE], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["freed", "True", "frozen", "True", "walked", "True"]
