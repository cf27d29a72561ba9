"""The progress bar of the long benchmarks: tqdm on stderr, one step per phase or ramp step (a
plain line per step when tqdm is not installed), so stdout keeps the figures and the final table."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A tqdm bar on stderr (a plain line per step when tqdm is not installed)."""

    def __init__(self, total: int) -> None:
        self.done = 0
        self.total = total
        try:
            from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            self.bar: Any = None
        else:
            self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)

    def step(self, what: str) -> None:
        if self.done:
            self._advance()
        self.done += 1
        if self.bar is not None:
            self.bar.set_description(what)
        else:
            print(f"[{self.done}/{self.total}] {what}", file=sys.stderr, flush=True)

    def _advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.update(self.total - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
