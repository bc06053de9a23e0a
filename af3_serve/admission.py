"""Admission control: requests are counted (in total and per client) before any work,
and their audio seconds are reserved from the header before decoding, so an overloaded
server refuses cheaply instead of decoding audio it will not serve."""

from dataclasses import dataclass

from af3_serve import metrics
from af3_serve.edge.errors import APIError

# Why a request is refused (the metric's reason label) -> status, message, code, retry-after.
REFUSALS = {
    "too_many_pending": (
        503,
        "The server is at capacity; retry shortly.",
        "server_overloaded",
        1,
    ),
    "too_many_pending_for_client": (
        429,
        "Too many requests in flight for this API key; retry shortly.",
        "rate_limit_exceeded",
        1,
    ),
    "audio_backlog": (
        503,
        "Too much audio is queued on this server; retry shortly.",
        "server_overloaded",
        5,
    ),
}


def refuse(reason: str) -> APIError:
    """The refusal for `reason`, counted in the metrics."""
    metrics.REJECTED.labels(reason).inc()
    status, message, code, retry_after = REFUSALS[reason]
    return APIError(status, message, code=code, retry_after=retry_after)


@dataclass
class Ticket:
    client: str
    audio_seconds: float = 0.0
    released: bool = False


class Admission:
    def __init__(self, max_pending: int, max_pending_per_client: int, max_queued_audio_s: float):
        self.max_pending = max_pending
        self.max_pending_per_client = max_pending_per_client
        self.max_queued_audio_s = max_queued_audio_s
        self.pending = 0
        self.per_client: dict[str, int] = {}
        self.queued_audio_s = 0.0

    def admit(self, client: str) -> Ticket:
        if self.pending >= self.max_pending:
            raise refuse("too_many_pending")
        if self.per_client.get(client, 0) >= self.max_pending_per_client:
            raise refuse("too_many_pending_for_client")
        self.pending += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        metrics.IN_FLIGHT.inc()
        return Ticket(client)

    def reserve_audio(self, ticket: Ticket, seconds: float) -> None:
        if self.queued_audio_s + seconds > self.max_queued_audio_s:
            raise refuse("audio_backlog")
        self.queued_audio_s += seconds
        ticket.audio_seconds += seconds

    def release(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        ticket.released = True
        self.pending -= 1
        self.per_client[ticket.client] -= 1
        if not self.per_client[ticket.client]:
            del self.per_client[ticket.client]
        self.queued_audio_s -= ticket.audio_seconds
        metrics.IN_FLIGHT.dec()
