"""``cleave ...`` with pyinstrument armed: SIGUSR1 starts sampling, SIGUSR2 stops and saves.

Only the window between the two signals is profiled (not start-up, imports
or seeding), as plain stack samples of the main thread, saved as pstats.

Usage: python -m bench.profile_target OUT.pstats run APP [cleave options]
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from pyinstrument import Profiler
from pyinstrument.renderers.pstatsrenderer import PstatsRenderer


def main(out: Path, argv: list[str]) -> None:
    profiler = Profiler(interval=0.001, async_mode="disabled")

    def start(*_: Any) -> None:
        profiler.start()

    def stop(*_: Any) -> None:
        session = profiler.stop()
        data = PstatsRenderer().render(session).encode("utf-8", errors="surrogateescape")
        out.write_bytes(data)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from cleave.cli import main as cleave

    sys.argv = ["cleave", *argv]
    cleave()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
