"""The optional input normalization stem (`model.input-norm`, fedmirasol/models/input_norm.py).

- off by default: the named configs keep exactly their parameters (old checkpoints load);
- on: a per-channel affine on video pixels and log-mel bins, the identity at start;
- FedBN keeps it on the client (never in what the server sends or the client replies) and it
  changes with local training; FedAvg shares it like any other parameter;
- DP-SGD works with the stem on: Opacus (hooks, functorch fallback) and PyTorch's expanded
  weights (`privacy.grad-sample-mode = "ew"`) give its exact per-sample gradients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmirasol.client import handlers as client_handlers
from fedmirasol.task.model import init_model
from fedmirasol.core.parameters import ParameterSplit, from_record, model_state, to_record
from fedmirasol.config import load_config, to_json
from fedmirasol.models import NAMED_CONFIGS, build_model, get_config
from fedmirasol.models.input_norm import RATE, InputNorm
from opacus_step import assert_per_sample_gradients_match, take_dp_step

STEM_KEYS = {
    "video_encoder.input_norm.weight", "video_encoder.input_norm.bias",
    "audio_encoder.input_norm.weight", "audio_encoder.input_norm.bias",
}


def small_batch(config, size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    from fedmirasol.data.batch import collate
    from fedmirasol.data.synthetic import DomainShift, SyntheticAVDataset, SyntheticConfig

    domain = DomainShift.random(seed=3, strength=1.5)
    dataset = SyntheticAVDataset(SyntheticConfig.for_model(config), size, seed=seed, domain=domain)
    return collate([dataset[i] for i in range(size)])


def test_off_by_default_and_the_named_configs_are_unchanged() -> None:
    assert all(not config.input_norm for config in NAMED_CONFIGS.values())
    tiny = build_model("tiny")
    assert not any("input_norm" in name for name in tiny.state_dict())
    assert sum(p.numel() for p in tiny.parameters()) == 300_043
    # A checkpoint of the default model loads strictly into a freshly built default model.
    build_model("tiny").load_state_dict(tiny.state_dict(), strict=True)


@pytest.mark.parametrize("name", ["tiny", "latefusion-tiny"])
def test_stem_adds_per_channel_parameters_and_starts_as_the_identity(name: str) -> None:
    torch.manual_seed(0)
    plain = build_model(get_config(name, num_frames=8)).eval()
    stem = build_model(get_config(name, num_frames=8, input_norm=True)).eval()
    added = set(stem.state_dict()) - set(plain.state_dict())
    assert added == STEM_KEYS
    n_mels = stem.config.n_mels
    assert stem.video_encoder.input_norm.gain.shape == (3,)
    assert stem.audio_encoder.input_norm.bias.shape == (n_mels,)
    # The stem model loads an old checkpoint (everything but the stem) and then computes the same.
    missing, unexpected = stem.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == STEM_KEYS and not unexpected
    batch = small_batch(plain.config)
    with torch.no_grad():
        torch.testing.assert_close(stem(batch).logits, plain(batch).logits)


def test_frozen_late_fusion_encoders_keep_the_stem_trainable() -> None:
    model = build_model(get_config("latefusion-tiny", input_norm=True, freeze_encoders=True))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert STEM_KEYS <= trainable
    assert not any(name.startswith(("video_encoder.", "audio_encoder.")) for name in trainable - STEM_KEYS)


def test_input_norm_is_a_per_channel_affine_on_its_axis() -> None:
    norm = InputNorm(3, dim=2)
    x = torch.randn(2, 4, 3, 5, 5)
    torch.testing.assert_close(norm(x), x)  # the identity at the start
    gain, shift = torch.tensor([2.0, 0.5, 1.0]), torch.tensor([0.1, -1.0, 0.0])
    with torch.no_grad():  # parameters in RATE units: gain = RATE w, shift = RATE b
        norm.weight.copy_(gain.view(3, 1, 1) / RATE)
        norm.bias.copy_(shift / RATE)
    torch.testing.assert_close(norm.gain, gain)
    expected = x * gain.view(1, 1, 3, 1, 1) + shift.view(1, 1, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected)
    # Undoing a colour gain and an offset: the learned statistics of a domain.
    cast, offset = torch.tensor([1.6, 0.4, 1.0]), 0.3
    with torch.no_grad():
        norm.weight.copy_(1 / cast.view(3, 1, 1) / RATE)
        norm.bias.copy_(-offset / cast / RATE)
    torch.testing.assert_close(norm(x * cast.view(1, 1, 3, 1, 1) + offset), x)
    with pytest.raises(ValueError, match="3 channels on axis 2"):
        norm(torch.randn(2, 4, 4, 5, 5))


def test_fedbn_keeps_the_stem_on_the_client_and_trains_it() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    config = load_config(None, [
        "data.num-clients=2", "data.clips-per-client=8", "data.test-clips=4", "data.domains=2",
        "data.domain-strength=1.5", "model.num-frames=8", "model.input-norm=true",
        "client.batch-size=4", "client.lr=0.01", "strategy.name='fedbn'",
    ])
    model = init_model(config)
    split = ParameterSplit.from_model(model, "normalization")
    assert STEM_KEYS <= set(split.local) and not STEM_KEYS & set(split.shared)
    record = ConfigRecord({client_handlers.CONFIG_KEY: to_json(config), "server-round": 1})
    message = Message(
        content=RecordDict({"arrays": to_record(model_state(model, split.shared)), "config": record}),
        message_type=MessageType.TRAIN, dst_node_id=5,
    )
    assert not STEM_KEYS & set(message.content.array_records["arrays"])  # the server sends none
    context = Context(run_id=1, node_id=5, state=RecordDict(), run_config={},
                      node_config={"partition-id": 0, "num-partitions": 2})
    answer = client_handlers.handle_train(message, context)
    sent = answer.content.array_records["arrays"]
    assert set(sent) == set(split.shared)  # the client replies with the shared part only
    kept = from_record(context.state.array_records["local-params"])
    assert STEM_KEYS <= set(kept)  # the stem persists in the client's own state
    initial = model_state(model, sorted(STEM_KEYS))
    for key in STEM_KEYS:  # and local training moved every part of it
        assert not np.allclose(kept[key], initial[key]), key

    # Under FedAvg the same stem is a shared parameter like any other.
    fedavg = ParameterSplit.from_model(model, "")
    assert STEM_KEYS <= set(fedavg.shared)


def test_dp_sgd_handles_the_stem_with_exact_per_sample_gradients() -> None:
    config = get_config("tiny", num_frames=8, input_norm=True)
    model, before = take_dp_step(config)  # Opacus' validator accepts it; one private step
    for key in STEM_KEYS:
        assert not torch.equal(model.state_dict()[key], before[key]), key
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():  # off the identity, so the gradients are not a special case
        model.video_encoder.input_norm.weight.uniform_(0.5 / RATE, 1.5 / RATE)
        model.audio_encoder.input_norm.bias.uniform_(-0.03, 0.03)
    assert_per_sample_gradients_match(model, small_batch(config, size=2, seed=1))


def test_expanded_weights_give_the_stem_exact_per_sample_gradients() -> None:
    from fedmirasol.privacy.expanded_weights import ExpandedWeightsObjective
    from fedmirasol.privacy.objective import per_sample_loss

    config = get_config("tiny", num_frames=8, input_norm=True)
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        model.video_encoder.input_norm.weight.uniform_(0.5 / RATE, 1.5 / RATE)
        model.audio_encoder.input_norm.bias.uniform_(-0.03, 0.03)
    batch = small_batch(config, size=2, seed=2)
    objective = ExpandedWeightsObjective(model)
    objective(batch).sum().backward()
    per_sample = {name: p.grad_sample.clone() for name, p in model.named_parameters()
                  if name in STEM_KEYS}
    objective.close()
    for index in range(2):
        model.zero_grad()
        single = {key: value[index : index + 1] for key, value in batch.items()}
        per_sample_loss(model, single, model(single)).sum().backward()
        for name, parameter in model.named_parameters():
            if name in STEM_KEYS:
                torch.testing.assert_close(per_sample[name][index], parameter.grad,
                                           rtol=1e-3, atol=1e-5, msg=name)
