"""An in-process Grid: delivers each message to a ClientApp in this process (tests and
benchmarks; real runs use Flower's simulation or deployment engine).

Messages travel as Flower serializes them (arrays as bytes), each node keeps its own
`Context`, a failing ClientApp answers with an error reply, and `drop` makes chosen nodes
vanish from a chosen stage on (no reply at all), the way a lost client looks to the server.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

Observer = Callable[[Message], None]


class LocalGrid(Grid):
    """A Grid over ClientApp instances; node i holds `node_configs[i]`."""

    def __init__(self, app: ClientApp, node_configs: Mapping[int, Mapping[str, object]],
                 observe: Observer | None = None) -> None:
        self.app = app
        self.contexts = {node: Context(run_id=1, node_id=node, node_config=dict(config),
                                       state=RecordDict(), run_config={})
                         for node, config in node_configs.items()}
        self.observe = observe or (lambda message: None)
        self.dropped: dict[int, list[tuple[str, str | None]]] = {}
        self._gone: set[tuple[int, str]] = set()  # (node, group id) pairs with no answers

    def drop(self, nodes: Iterable[int], from_message_type: str,
             group_id: str | None = None) -> None:
        """From the first `from_message_type` message on, `nodes` never answer: in that
        message's group (round) only, or for good when `group_id` is None. A node may be
        dropped in several rounds (one call per round)."""
        for node in nodes:
            self.dropped.setdefault(node, []).append((from_message_type, group_id))

    def _vanished(self, message: Message) -> bool:
        node, meta = message.metadata.dst_node_id, message.metadata
        for message_type, group in self.dropped.get(node, ()):
            if meta.message_type == message_type and group in (None, meta.group_id):
                self._gone.add((node, meta.group_id if group else "*"))
        return (node, "*") in self._gone or (node, meta.group_id) in self._gone

    def set_run(self, run) -> None:  # noqa: ANN001 - Flower's Run
        self._run = run

    @property
    def run(self):  # noqa: ANN201
        return getattr(self, "_run", None)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("LocalGrid answers in send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("LocalGrid answers in send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            if self._vanished(message) or node not in self.contexts:
                continue
            try:
                reply = self.app(message, self.contexts[node])
            except Exception as error:  # noqa: BLE001 - the engine turns it into an error reply
                reply = Message(Error(code=0, reason=f"{type(error).__name__}: {error}"),
                                reply_to=message)
            self.observe(reply)
            replies.append(reply)
        return replies
