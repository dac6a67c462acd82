"""One logging path: stdlib logging to stderr (written through tqdm, so bars stay intact) and, while a
run is open, to its train.log. Plus progress bars and the number formats every output line uses.

Library code logs with `log.info(...)`. Only rank 0 prints. A record with `extra={"console": False}`
goes to the file alone: the final report that the CLI prints on stdout is logged that way, so
train.log holds every line the user saw.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

log = logging.getLogger("pgolf")
log.setLevel(logging.INFO)
log.propagate = False

BARS = True  # tqdm progress bars exist; the counted train_gpt.py is bundled with False (no tqdm there)
DETAIL = True  # diagnostics beyond the score (optimizer groups, the pack report's tables, the scorer's
# kept distributions) and hints at pgolf commands; the counted script is bundled with False
_state = {"progress": True, "rank": 0}


class _ConsoleHandler(logging.Handler):
    """stderr through tqdm.write, so an open bar is redrawn below the line instead of torn."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "console", True) or _state["rank"] != 0:
            return
        try:
            (tqdm.write if BARS else print)(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_console(progress: bool = True, rank: int = 0) -> None:
    """Install the stderr handler once; later calls update the progress flag and the rank."""
    _state["progress"], _state["rank"] = progress, rank
    if not any(isinstance(h, _ConsoleHandler) for h in log.handlers):
        h = _ConsoleHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)


@contextmanager
def log_file(path: str | Path | None, enabled: bool = True) -> Iterator[None]:
    """Append every log line (timestamped) to `path` while the block runs (rank 0 only)."""
    if path is None or not enabled or _state["rank"] != 0:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    h = logging.FileHandler(path, mode="a", encoding="utf-8")
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(h)
    try:
        yield
    finally:
        log.removeHandler(h)
        h.close()


def progress_enabled() -> bool:
    return _state["progress"] and _state["rank"] == 0


class Quiet:
    """A bar that draws nothing: what bar() gives when progress is off or there are no bars."""

    n = 0

    def __init__(self, iterable: Iterable | None = None):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, k: float = 1) -> None:
        self.n += k

    def set_postfix_str(self, *args, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
        **kw):
    """A tqdm bar on rank 0 when progress is on (hidden when stderr is not a terminal)."""
    if not BARS or not progress_enabled():
        return Quiet(iterable)
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False,
                disable=None, **kw)


class Clock:
    """Seconds since construction (perf_counter)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


# -- number formats ---------------------------------------------------------------------------

def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 step', '2 steps', '1,000 steps'."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def fmt_bpb(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4f}"


def fmt_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,} bytes"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.1f} s" if s < 600 else f"{s / 60:.1f} min"


def fmt_rate(tokens_per_s: float | None) -> str:
    if tokens_per_s is None:
        return "n/a"
    if tokens_per_s >= 1e6:
        return f"{tokens_per_s / 1e6:.2f}M tok/s"
    if tokens_per_s >= 1e4:
        return f"{tokens_per_s / 1e3:.1f}k tok/s"
    return f"{tokens_per_s:,.0f} tok/s"
