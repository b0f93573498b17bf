"""Compressed updates (`compression.codec`), and optionally a compressed downlink
(`compression.downlink`): the messages carry packed payloads (fedmirasol.compression); the
server decodes every reply's payload into the float32 delta it stands for before the reply
filters see it, and the run's mean (the strategy's rule, or client-level DP's noised mean)
moves the model as without compression. A payload that does not decode to an update of the
global model's layout under the run's codec is rejected, naming what is wrong."""

from __future__ import annotations

from flwr.app import Message

from fedmirasol.compression.codec import MalformedPayload, from_payload_record
from fedmirasol.compression.downlink import DownlinkSender
from fedmirasol.compression.registry import downlink_codec, update_codec
from fedmirasol.config.compression import CompressionConfig
from fedmirasol.core import vector
from fedmirasol.core.parameters import NumpyState, to_record
from fedmirasol.core.reply_checks import Rejection
from fedmirasol.core.seeds import seed_for
from fedmirasol.server.aggregators.base import Run
from fedmirasol.server.aggregators.mean import StrategyMean

DOWNLINK_STREAM = 12  # seeds the server's downlink rounding


class CompressedMean(StrategyMean):
    """`mean`'s step over the decoded updates."""

    name = "compressed"

    def __init__(self, mean: StrategyMean, settings: CompressionConfig, run_seed: int) -> None:
        self.mean = mean
        self.takes_sum = mean.takes_sum
        self.codec = update_codec(settings)
        down = downlink_codec(settings)
        self.downlink = None if down is None else DownlinkSender(
            down, seed_for(run_seed, DOWNLINK_STREAM))

    def exchange(self, run: Run, server_round: int, phase: str, messages: list[Message]
                 ) -> list[Message]:
        if self.downlink is None:
            return super().exchange(run, server_round, phase, messages)
        messages = self.downlink.encode(run.global_shared, messages)
        replies = super().exchange(run, server_round, phase, messages)
        self.downlink.acknowledge(messages, replies)
        return replies

    def readable(self, run: Run, replies: list[Message]
                 ) -> tuple[list[Message], list[Rejection]]:
        """Each reply's payload replaced by the float32 delta it decodes to."""
        if self.codec is None:
            return replies, []
        layout = vector.layout(run.global_shared)
        usable, rejected = [], []
        for reply in replies:
            if reply.has_error() or "arrays" not in reply.content.array_records:
                usable.append(reply)  # the filters name errors and "budget exhausted" replies
                continue
            try:
                flat = from_payload_record(self.codec, reply.content.array_records["arrays"],
                                           layout)
            except MalformedPayload as problem:
                node = reply.metadata.src_node_id
                rejected.append(Rejection(node, run.partitions.get(node),
                                          f"compressed update: {problem}"))
                continue
            reply.content["arrays"] = to_record(vector.unflatten(flat, layout))
            usable.append(reply)
        return usable, rejected

    def step(self, run: Run, server_round: int, accepted: list[Message],
             num_sampled: int, population: int) -> tuple[NumpyState, str | None]:
        return self.mean.step(run, server_round, accepted, num_sampled, population)
