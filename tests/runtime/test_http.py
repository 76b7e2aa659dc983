"""The HTTP listening sockets Cleave makes for the gateway and the admin port."""

from __future__ import annotations

import asyncio
import socket

import pytest

from cleave.errors import ConfigError
from cleave.runtime.http import bind


async def _nodelay_of_accepted(listener: socket.socket) -> int:
    """TCP_NODELAY of a connection asyncio accepts on ``listener``."""
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_client, sock=listener)
    port = listener.getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(accepted, 5)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_served_connections_do_not_wait_for_delayed_acks() -> None:
    # uvicorn writes a response's head and body separately: with Nagle on, the body
    # waits for the client's delayed ACK (40 ms) on every keep-alive request.
    assert await _nodelay_of_accepted(bind("127.0.0.1", 0)) != 0


async def test_a_socket_handed_to_a_worker_keeps_nagle_off() -> None:
    listener = bind("127.0.0.1", 0)
    inherited = socket.socket(fileno=listener.detach())  # as a worker rebuilds it from its fd
    assert await _nodelay_of_accepted(inherited) != 0


def test_a_busy_port_is_a_clear_error() -> None:
    first = bind("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match="is another server using it"):
            bind("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()
