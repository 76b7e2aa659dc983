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
