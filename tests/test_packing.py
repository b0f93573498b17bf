"""Packing a message's arrays into one object for a deployment's wire, and back."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedmirasol.core.packing import META_PREFIX, PACKED_ARRAY, PackingError, is_packed, pack, unpack
from fedmirasol.core.parameters import to_record


def _content() -> RecordDict:
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([7], np.int64),
             "empty": np.zeros((0, 4), np.float16), "masked": np.array([2**40, 3], np.uint64)}
    return RecordDict({"arrays": to_record(state), "config": ConfigRecord({"lr": 0.1}),
                       "metrics": MetricRecord({"loss": 1.5}),
                       "one": ArrayRecord({"only": Array(np.ones(3, np.float32))})})


def _arrays(record: ArrayRecord) -> list[tuple[str, str, tuple, str, bytes]]:
    return [(k, a.dtype, tuple(a.shape), a.stype, a.data) for k, a in record.items()]


def test_pack_makes_one_array_per_record_and_unpack_restores_every_byte() -> None:
    content = _content()
    packed = pack(content)
    assert is_packed(packed) and not is_packed(content)
    assert list(packed["arrays"].keys()) == [PACKED_ARRAY]
    assert packed["one"] is content["one"]  # a single array is sent as it is
    restored = unpack(packed)
    assert list(restored.keys()) == ["arrays", "config", "metrics", "one"]
    assert _arrays(restored["arrays"]) == _arrays(content["arrays"])  # order, dtype, bytes
    assert restored["arrays"]["masked"].numpy().tolist() == [2**40, 3]
    assert dict(restored["config"]) == {"lr": 0.1}


def test_content_without_a_packable_record_is_left_as_it_is() -> None:
    content = RecordDict({"config": ConfigRecord({"a": 1})})
    assert pack(content) is content and unpack(content) is content


@pytest.mark.parametrize("lie, says", [
    (lambda meta: meta.__setitem__("sizes", [s + 1 for s in meta["sizes"]]), "do not fit"),
    (lambda meta: meta.__setitem__("names", ["w"] * len(meta["names"])), "unique"),
    (lambda meta: meta.__setitem__("dims", [-1] * len(meta["dims"])), "do not fit"),
    (lambda meta: meta.__setitem__("dtypes", [1] * len(meta["dtypes"])), "not a list of str"),
])
def test_unpack_refuses_a_description_that_does_not_fit_the_bytes(lie, says) -> None:
    packed = pack(_content())
    lie(packed[META_PREFIX + "arrays"])
    with pytest.raises(PackingError, match=f"'arrays'.*{says}"):
        unpack(packed)


def test_unpack_names_a_packed_record_without_its_description() -> None:
    packed = pack(_content())
    del packed[META_PREFIX + "arrays"]
    with pytest.raises(PackingError, match="'arrays' has no description"):
        unpack(packed)


def test_packed_wire_mod_unpacks_for_the_clientapp_and_packs_its_reply(monkeypatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.client.mods import packed_wire

    for key in ("_run_id", "_task_id", "_node_id"):  # what a ClientApp process has set
        monkeypatch.setattr(TaskIdentity, key, 1)
    message = Message(content=pack(_content()), dst_node_id=1, message_type="train")
    seen = {}

    def clientapp(msg: Message, context: Context) -> Message:
        seen["keys"] = list(msg.content["arrays"].keys())
        return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    reply = packed_wire(message, context, clientapp)
    assert seen["keys"] == ["w", "n", "empty", "masked"]
    assert is_packed(reply.content)
    assert _arrays(unpack(reply.content)["arrays"]) == _arrays(_content()["arrays"])


class _SuperLinkStandIn:
    """Push/pull like Flower's SuperLink Grid: keeps what was pushed, answers each message
    `after` seconds later with its own arrays (packed on the wire, as a ClientApp replies)."""

    def __init__(self, after: float) -> None:
        self.after, self.pushed, self.pulls = after, [], 0

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id
            self.pushed.append((time.monotonic(), message, message.content))
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        self.pulls += 1
        wanted = set(message_ids)
        return [Message(RecordDict({"arrays": content["arrays"],
                                    META_PREFIX + "arrays": content[META_PREFIX + "arrays"]}),
                        reply_to=message)
                for at, message, content in self.pushed
                if message.metadata.message_id in wanted and time.monotonic() - at >= self.after]


def test_deployed_grid_packs_what_it_sends_unpacks_replies_and_pulls_promptly(monkeypatch
                                                                              ) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.server.exchange import DeployedGrid

    for key in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, key, 1)
    link = _SuperLinkStandIn(after=0.3)
    grid = DeployedGrid(link, pull_interval=0.05)
    content = _content()
    messages = [Message(content=content, dst_node_id=node, message_type="train")
                for node in (1, 2)]
    started = time.monotonic()
    replies = grid.send_and_receive(messages, timeout=30)
    took = time.monotonic() - started
    assert all(is_packed(sent) for _, _, sent in link.pushed)  # packed on the wire
    assert all(m.content is content for m in messages)  # the caller's messages as built
    assert len(replies) == 2 and all(not is_packed(r.content) for r in replies)
    assert _arrays(replies[0].content["arrays"]) == _arrays(content["arrays"])
    assert took < 2.0 and link.pulls >= 3  # pulled every 0.05 s, not Flower's 3 s


def test_a_reply_whose_description_lies_stays_packed_and_the_reply_check_rejects_it(
        monkeypatch) -> None:
    """A client that sends sizes not fitting its bytes does not crash the round: the reply is
    left packed and the update check names what is wrong with it."""
    from flwr.supercore.task_identity import TaskIdentity

    from fedmirasol.core.reply_checks import check_update
    from fedmirasol.server.exchange import DeployedGrid

    for key in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, key, 1)
    link = _SuperLinkStandIn(after=0.0)
    grid = DeployedGrid(link, pull_interval=0.01)
    content = _content()
    ids = grid.push_messages([Message(content=content, dst_node_id=1, message_type="train")])
    _, _, sent = link.pushed[0]
    sent[META_PREFIX + "arrays"]["sizes"] = [s + 1 for s in sent[META_PREFIX + "arrays"]["sizes"]]
    [reply] = grid.pull_messages(ids)
    assert is_packed(reply.content)
    expected = {key: tuple(array.shape) for key, array in content["arrays"].items()}
    assert "does not fit their bytes" in check_update(reply.content, expected)
