"""Error types.  Each says who is at fault and what to answer with.

As in h11 (``RemoteProtocolError.error_status_hint``) and websockets (``PayloadTooBig``), the
sans-I/O core raises these and the I/O layer turns them into a status line or a close code;
no other exception type is allowed to reach a client.
"""

from __future__ import annotations


class StreamcoreError(Exception):
    """Base class."""


class ProtocolError(StreamcoreError):
    """The peer broke the wire protocol.  The connection is answered (if it still can be)
    with ``status`` (HTTP) or ``close_code`` (WebSocket) and then closed."""

    def __init__(self, message: str, *, status: int = 400, close_code: int = 1002) -> None:
        super().__init__(message)
        self.status = status
        self.close_code = close_code


class HeadTooLarge(ProtocolError):
    def __init__(self, size: int, limit: int, what: str = "request head") -> None:
        super().__init__(f"{what} of {size} bytes exceeds the limit of {limit}", status=431)


class BodyTooLarge(ProtocolError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"request body of {size} bytes exceeds the limit of {limit}", status=413)


class MessageTooBig(ProtocolError):
    """WebSocket message or frame over the limit (RFC 6455 7.4.1: 1009)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"message of {size} bytes exceeds the limit of {limit}", status=413, close_code=1009
        )


class RequestError(StreamcoreError):
    """A well-formed request we refuse: answered with an OpenAI-style error body
    ``{"error": {"message", "type", "param", "code"}}`` and the connection kept."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or []

    def body(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class FellBehind(StreamcoreError):
    """A reader's cursor is older than the oldest frame the stream's log still holds:
    it was too slow for the fan-out, or resumed too late.  It is told and closed."""

    def __init__(self, wanted_seq: int, first_seq: int) -> None:
        super().__init__(
            f"event {wanted_seq} is no longer in the replay log (oldest held: {first_seq})"
        )
        self.wanted_seq = wanted_seq
        self.first_seq = first_seq
