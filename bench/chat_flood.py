"""Does a chat flood slow the fast path? Uncached sensor latency with and without one, same run.

Run: `.venv/bin/python bench/chat_flood.py [--rate 200] [--duration 20] [--rounds 2]
[--connections 16] [--chat-key client|operator]`.

Method: one `mec serve` on its embedded defaults (generated keys, temporary data dir). Each
round measures uncached sensor requests (`bench/loadgen.py open --kind sensor`: a fixed rate,
latency from each scheduled instant) twice: alone, then while `--connections` connections send
`POST /v1/chat` back to back with one key (`loadgen.py closed --kind chat`, ignoring Retry-After,
as a flood does). The chat flood starts 2 s before the sensor load and ends after it. Rounds
alternate quiet/flood so slow drift of the machine hits both alike. Prints p50/p99 per phase, the
flood's answers by status, and the ratio flood p99 / quiet p99 (median over rounds; target ≤ 1.5).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from site_bench import Children, Server, spawn_site, wait_site  # noqa: E402

from api.launcher import ChildProcess  # noqa: E402

TARGET_RATIO = 1.5


def _loadgen(children: Children, name: str, args: list[str]) -> ChildProcess:
    return children.spawn(name, [sys.executable, str(BENCH_DIR / "loadgen.py"), *args], pipe_stdout=True)


def _tally(proc: ChildProcess, timeout_s: float) -> dict[str, Any]:
    out = proc.communicate(timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen exited with {proc.returncode}")
    return json.loads(out)


def _percentile(values: list[int], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))] / 1000


def sensor_phase(
    children: Children, site: Server, rate: float, duration: float, start_at: float
) -> ChildProcess:
    args = ["open", "--port", str(site.port), "--key", site.key, "--kind", "sensor", "--expect-tier", "local"]
    args += [
        "--rate",
        str(rate),
        "--duration",
        str(duration),
        "--connections",
        "8",
        "--start-at",
        f"{start_at:.3f}",
    ]
    return _loadgen(children, "sensor", args)


def chat_flood(
    children: Children, site: Server, key: str, connections: int, duration: float, start_at: float
) -> ChildProcess:
    args = ["closed", "--port", str(site.port), "--path", "/v1/chat", "--key", key, "--kind", "chat"]
    args += ["--connections", str(connections), "--duration", str(duration), "--start-at", f"{start_at:.3f}"]
    return _loadgen(children, "chat", args)


def summary(tally: dict[str, Any]) -> dict[str, Any]:
    lat = tally["latencies_us"]
    return {
        "sent": tally["sent"],
        "ok": tally["ok"],
        "errors": tally["errors"],
        "p50_ms": round(_percentile(lat, 50), 2),
        "p99_ms": round(_percentile(lat, 99), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--chat-key", choices=["client", "operator"], default="client")
    parser.add_argument(
        "--set", action="append", default=[], metavar="MEC_NAME=VALUE", help="a setting for the site"
    )
    args = parser.parse_args(argv)
    extra_env = dict(item.split("=", 1) for item in args.set)
    children = Children()
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mec-chat-flood-") as tmp:
            workdir = Path(tmp)
            site = spawn_site(children, workdir, extra_env)
            wait_site(site)
            flood_key = site.key if args.chat_key == "client" else site.operator_key
            for round_ in range(args.rounds):
                start = time.time() + 1.5
                quiet = _tally(
                    sensor_phase(children, site, args.rate, args.duration, start), args.duration + 60
                )
                rows.append({"round": round_, "phase": "quiet", **summary(quiet)})
                start = time.time() + 1.5
                flood = chat_flood(children, site, flood_key, args.connections, args.duration + 4, start)
                sensor = sensor_phase(children, site, args.rate, args.duration, start + 2)
                loud = _tally(sensor, args.duration + 60)
                chat = _tally(flood, args.duration + 60)
                rows.append({"round": round_, "phase": "chat flood", **summary(loud), "chat": summary(chat)})
    finally:
        children.stop_all()
    print(
        f"sensor at {args.rate:g} req/s for {args.duration:g} s per phase; chat flood: {args.connections} "
        f"connections, {args.chat_key} key (run {secrets.token_hex(2)})"
    )
    print(f"{'round':>5}  {'phase':<10}  {'ok/sent':>11}  {'p50 ms':>7}  {'p99 ms':>7}  chat answers")
    for row in rows:
        chat = row.get("chat")
        answers = ""
        if chat:
            answers = f"{chat['ok']} x 200, " + ", ".join(
                f"{n} x {k}" for k, n in sorted(chat["errors"].items())
            )
        print(
            f"{row['round']:>5}  {row['phase']:<10}  {row['ok']:>5}/{row['sent']:<5}  {row['p50_ms']:>7}  "
            f"{row['p99_ms']:>7}  {answers}"
        )
    quiet_p99 = statistics.median(r["p99_ms"] for r in rows if r["phase"] == "quiet")
    flood_p99 = statistics.median(r["p99_ms"] for r in rows if r["phase"] == "chat flood")
    ratio = flood_p99 / quiet_p99
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(
        f"p99 with flood / without: {flood_p99:.2f} / {quiet_p99:.2f} ms = {ratio:.2f}x "
        f"(target <= {TARGET_RATIO}x): {verdict}"
    )
    print(json.dumps({"rows": rows, "ratio": round(ratio, 3)}))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
