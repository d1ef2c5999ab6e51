"""Framed messages between the supervisor (parent) and the confined child over one socketpair.

A frame is a 1-byte kind, a 4-byte big-endian length and the body. ``JSON`` frames carry control messages;
bulk bytes (a payload, a response body) follow a JSON header that states their size and travel as ``DATA``
frames of at most ``MAX_FRAME`` bytes, so neither side ever buffers an unbounded frame. The parent reads
with a deadline (``recv(timeout=...)``) so it keeps owning the clock; the child reads blocking. Everything a
peer sends is untrusted by the other side: sizes are checked before allocation.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import time
from typing import Any

KIND_JSON = 1
KIND_DATA = 2
#: Largest frame body in bytes.
MAX_FRAME = 1024 * 1024
_HEADER = struct.Struct("!BI")


class ChannelClosed(Exception):
    """The peer closed the channel (or it broke) before a whole frame arrived."""


class ChannelTimeout(Exception):
    """No whole frame arrived before the deadline."""


class ProtocolViolation(Exception):
    """The peer sent something the protocol does not allow (bad kind, oversized frame, bad JSON)."""


class Channel:
    """One end of the supervisor/child socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    def send_json(self, message: dict[str, Any]) -> None:
        """Send a control message.

        Args:
            message: JSON-serialisable dict with a ``type`` key.

        Raises:
            ChannelClosed: The peer is gone.
        """
        body = json.dumps(message, separators=(",", ":")).encode("utf-8")
        if len(body) > MAX_FRAME:
            raise ProtocolViolation("control message too large")
        self._send(KIND_JSON, body)

    def send_data(self, data: bytes | bytearray | memoryview) -> None:
        """Send bulk bytes as DATA frames (announce their size in a JSON message first).

        Args:
            data: The bytes.

        Raises:
            ChannelClosed: The peer is gone.
        """
        view = memoryview(data)
        for start in range(0, len(view), MAX_FRAME):
            self._send(KIND_DATA, view[start : start + MAX_FRAME])

    def _send(self, kind: int, body: bytes | memoryview) -> None:
        try:
            self.sock.sendall(_HEADER.pack(kind, len(body)))
            self.sock.sendall(body)
        except OSError as exc:
            raise ChannelClosed(f"send failed: {exc}") from exc

    def recv(self, deadline: float | None = None) -> tuple[int, bytes]:
        """Receive one frame.

        Args:
            deadline: ``time.monotonic()`` value to give up at; None blocks.

        Returns:
            ``(kind, body)``.

        Raises:
            ChannelTimeout: The deadline passed first.
            ChannelClosed: The peer closed the channel.
            ProtocolViolation: Unknown kind or oversized frame.
        """
        header = self._read_exact(_HEADER.size, deadline)
        kind, length = _HEADER.unpack(header)
        if kind not in (KIND_JSON, KIND_DATA) or length > MAX_FRAME:
            raise ProtocolViolation(f"bad frame kind={kind} length={length}")
        return kind, self._read_exact(length, deadline)

    def recv_json(self, deadline: float | None = None) -> dict[str, Any]:
        """Receive a control message.

        Args:
            deadline: As for ``recv``.

        Returns:
            The message.

        Raises:
            ProtocolViolation: The next frame is not a JSON object with a ``type``.
        """
        kind, body = self.recv(deadline)
        if kind != KIND_JSON:
            raise ProtocolViolation("expected a control message, got data")
        try:
            message = json.loads(body)
        except ValueError as exc:
            raise ProtocolViolation(f"bad control message: {exc}") from exc
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolViolation("control message without a type")
        return message

    def recv_data(self, size: int, deadline: float | None = None, *, sink: Any = None) -> bytes:
        """Receive exactly ``size`` bytes of DATA frames.

        Args:
            size: Bytes announced by the preceding control message (the caller has checked its limit).
            deadline: As for ``recv``.
            sink: A writable file to stream into; the bytes are returned when None.

        Returns:
            The bytes (empty when streamed into ``sink``).

        Raises:
            ProtocolViolation: A control frame or more bytes than announced arrived.
        """
        parts: list[bytes] = []
        got = 0
        while got < size:
            kind, body = self.recv(deadline)
            if kind != KIND_DATA or got + len(body) > size:
                raise ProtocolViolation("data does not match its announced size")
            got += len(body)
            if sink is None:
                parts.append(body)
            else:
                sink.write(body)
        return b"".join(parts)

    def _read_exact(self, size: int, deadline: float | None) -> bytes:
        while len(self._buffer) < size:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChannelTimeout("deadline passed")
                ready, _, _ = select.select([self.sock], [], [], remaining)
                if not ready:
                    raise ChannelTimeout("deadline passed")
            try:
                chunk = self.sock.recv(max(size - len(self._buffer), 65536))
            except OSError as exc:
                raise ChannelClosed(f"receive failed: {exc}") from exc
            if not chunk:
                raise ChannelClosed("peer closed the channel")
            self._buffer.extend(chunk)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data
