"""`mec chat`: a terminal client of `POST /v1/chat` on a running site."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import httpx

CONFIRM_WORDS = frozenset({"yes", "y", "confirm", "confirmed", "do it"})


def default_key(data_dir: Path, operator_keys: list[str]) -> str | None:
    """The operator key a local operator would use: configured, or the one the site generated."""
    if operator_keys:
        return operator_keys[0]
    path = data_dir / "api-keys.json"
    try:
        return str(json.loads(path.read_text())["operator"])
    except (OSError, ValueError, KeyError):
        return None


def site_url(site_file: Path) -> str | None:
    """The URL a running `mec serve` wrote in its data dir, if that process is still alive."""
    try:
        data = json.loads(site_file.read_text())
        url, pid = str(data["url"]), int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    return url


def _print_turn(body: dict[str, Any], out: TextIO) -> None:
    for call in body.get("tool_calls", []):
        args = json.dumps(call["input"], separators=(",", ":"))
        note = f" — {call['reason']}" if call.get("reason") else ""
        out.write(f"  · {call['name']}({args}) {call['status']} {call['duration_ms']:.1f} ms{note}\n")
    out.write(f"{body['reply']}\n")
    usage = body.get("usage", {})
    out.write(f"  [{body['model']}, {body['latency_ms']:.0f} ms, {usage.get('total_tokens', 0)} tokens]\n")


def _needs_confirmation(body: dict[str, Any]) -> bool:
    return any(
        call["status"] == "refused" and "confirm" in (call.get("reason") or "")
        for call in body.get("tool_calls", [])
    )


def run_chat(url: str, key: str, lines: Iterable[str], out: TextIO = sys.stdout, prompt: bool = True) -> int:
    """Send each line as a chat message in one session; 'yes' confirms a refused destructive step.

    Returns 0 when every message was answered, 1 when any was refused or failed.
    """
    session_id: str | None = None
    failures = 0
    last_message: str | None = None
    last_body: dict[str, Any] = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        for raw in lines:
            line = raw.strip()
            if not line:
                continue
            if line in ("exit", "quit"):
                break
            confirm = False
            message = line
            if line.lower() in CONFIRM_WORDS and last_message and _needs_confirmation(last_body):
                message, confirm = last_message, True
            payload: dict[str, Any] = {"message": message, "confirm": confirm}
            if session_id:
                payload["session_id"] = session_id
            try:
                response = http.post("/v1/chat", json=payload)
            except httpx.HTTPError as exc:
                out.write(f"error: cannot reach {url}: {exc}\n")
                return 1
            body = response.json()
            if response.status_code != 200:
                error = body.get("error", {})
                out.write(f"error {response.status_code}: {error.get('message', body)}\n")
                failures += 1
                continue
            session_id, last_message, last_body = body["session_id"], message, body
            _print_turn(body, out)
            if _needs_confirmation(body):
                out.write("  (type 'yes' to confirm)\n")
            if prompt:
                out.write("> ")
                out.flush()
    return 1 if failures else 0
