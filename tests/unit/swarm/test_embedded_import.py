"""Importing the embedded backend leaves the process's socket functions as they were.

pysyncobj's TCP layer imports its `win_inet_pton`, which replaces `socket.inet_ntop` for the whole
process with a Windows-only function on every platform; psutil's connection listing and anything
else formatting an address would then raise in the site and in the tests."""

from __future__ import annotations

import socket
import subprocess
import sys


def test_importing_the_embedded_backend_keeps_socket_inet_ntop_working() -> None:
    code = (
        "import socket, swarm.consensus.embedded, pysyncobj.tcp_connection;"
        "print(socket.inet_ntop(socket.AF_INET, bytes([127, 0, 0, 1])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "127.0.0.1"
    assert socket.inet_ntop(socket.AF_INET6, bytes(15) + b"\x01") == "::1"
