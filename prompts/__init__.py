"""System prompts as text files, loaded by name (`load_prompt("operator")` reads operator.txt)."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load_prompt(name: str) -> str:
    """The text of `prompts/<name>.txt`; a missing prompt is a `FileNotFoundError` naming it."""
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"invalid prompt name {name!r}")
    path = resources.files(__name__).joinpath(f"{name}.txt")
    if not path.is_file():
        raise FileNotFoundError(f"no prompt named {name!r} in the prompts package")
    return path.read_text(encoding="utf-8").strip()
