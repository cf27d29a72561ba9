from __future__ import annotations

import socket

from tools.runtimes.base import RECENT_PORTS, free_port


def test_free_port_never_hands_out_a_port_again_while_it_is_recent() -> None:
    ports = [free_port() for _ in range(min(RECENT_PORTS, 200))]
    assert len(set(ports)) == len(ports)


def test_a_port_it_hands_out_can_be_bound() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
