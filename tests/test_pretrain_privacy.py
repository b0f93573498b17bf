"""Pre-training objectives at the DP release boundary: the noised figures a DP client releases
are sums of per-clip terms of the objective it trains, each bounded and depending on its own
clip, and nothing else about its data leaves it (the kNN probe, retrieval and the objective's
training figures compare or describe clips in the clear)."""

from __future__ import annotations

import pytest
import torch
from flwr.supercore.task_identity import TaskIdentity
from torch.utils.data import DataLoader

from fedmirasol.client import handlers as client_handlers
from fedmirasol.client.task import model_and_split
from fedmirasol.core.parameters import model_state, to_record
from fedmirasol.data.batch import collate
from fedmirasol.models import build_model, get_config
from fedmirasol.models.objectives import attach_objective
from fedmirasol.models.objectives.contrastive import zero_shot_predict
from fedmirasol.privacy.dp_metrics import loss_sums
from fedmirasol.training.pretrain_eval import EVAL_MASK_SEED, evaluate_objective
from fedmirasol.training.pretraining import attach_pretraining, synthetic_prompts
from fedmirasol.config import load_config
from fedmirasol.data.synthetic import SyntheticAVDataset, SyntheticConfig
from test_federated_messages import client_context, tiny_config, train_message

DP = {"privacy.enabled": "true", "privacy.noise-multiplier": 1.0, "client.local-epochs": 1,
      "privacy.eval-noise-multiplier": 2.0}


@pytest.fixture(autouse=True)
def task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def samples(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    data = SyntheticAVDataset(SyntheticConfig.for_model(get_config("tiny")), count, seed=seed)
    return [data[i] for i in range(count)]


def contrastive_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(get_config("tiny"))
    config = load_config(None, ["pretrain.objective='contrastive'", "pretrain.negatives='public'",
                                "pretrain.public-negatives=4"])
    attach_pretraining(model, config.pretrain, synthetic_prompts(model.config))
    return model


def test_videomae_dp_evaluation_bounds_each_clip_and_drops_the_knn_probe() -> None:
    torch.manual_seed(0)
    model = build_model(get_config("tiny"))
    attach_objective(model, "videomae")
    loader = DataLoader(samples(5), batch_size=2, collate_fn=collate)
    clear = evaluate_objective(model, loader)
    assert "knn_accuracy" in clear
    bounded = evaluate_objective(model, loader, loss_bound=1e6)
    assert set(bounded) == {"loss", "num_examples"}  # the kNN probe compares clips: not sent
    # each clip's error under the evaluation's fixed masks, averaged over clips
    generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
    with torch.no_grad():
        errors = torch.cat([sum(e for e, _ in model.objective.terms(model, batch, generator)
                                .values()) for batch in loader])
    assert bounded["loss"] == pytest.approx(float(errors.mean()), rel=1e-5)
    bound = float(errors.min()) / 2  # every clip's error is over it: each one counts `bound`
    assert evaluate_objective(model, loader, loss_bound=bound)["loss"] == pytest.approx(bound)


def test_contrastive_dp_evaluation_is_zero_shot_and_public_negative_infonce_per_clip() -> None:
    model = contrastive_model()
    objective = model.objective
    loader = DataLoader(samples(6, seed=3), batch_size=4, collate_fn=collate)
    bounded = evaluate_objective(model, loader, loss_bound=1e6)
    assert set(bounded) == {"loss", "accuracy", "num_examples"}  # no retrieval: it compares
    batch = collate(samples(6, seed=3))
    with torch.no_grad():
        objective.before_training(model)
        losses = objective.per_sample_loss(model, batch)
        prompts = [objective.embed_text(torch.stack(
            [objective.text_encoder.tokenizer.encode(p, objective.text_encoder.max_len)
             for p in class_prompts])) for class_prompts in objective.class_prompts]
        classes = torch.nn.functional.normalize(torch.stack([p.mean(0) for p in prompts]), dim=-1)
        predicted = zero_shot_predict(objective.embed_video(model, batch), classes)
    assert bounded["loss"] == pytest.approx(float(losses.mean()), rel=1e-4)
    assert bounded["accuracy"] == pytest.approx(float((predicted == batch["label"]).float().mean()))


def test_the_released_training_loss_is_the_objectives_not_the_classifiers() -> None:
    model = contrastive_model()
    model.objective.before_training(model)
    data = samples(4)
    batch = collate(data)
    with torch.no_grad():
        expected = model.objective.per_sample_loss(model, batch).clamp(0, 10.0).sum()
    sums = loss_sums(model, data, bound=10.0, batch_size=4)
    assert sums["dp-count"] == 4
    assert sums["dp-loss-sum"] == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize("objective", [
    {"pretrain.objective": "videomae", "pretrain.audio-mask-ratio": 0.8},
    {"pretrain.objective": "contrastive", "pretrain.negatives": "public",
     "pretrain.public-negatives": 4}])
def test_a_dp_pretraining_client_releases_only_dp_figures_and_bookkeeping(objective) -> None:
    from fedmirasol.client.release import PUBLIC_BOOKKEEPING

    config = tiny_config(**DP, **objective)
    model, _, split = model_and_split(config)  # the objective's trained parts only travel
    arrays = to_record(model_state(model, split.shared))
    context = client_context()
    train = dict(client_handlers.handle_train(train_message(config, 1, arrays), context)
                 .content.metric_records["metrics"])
    evaluated = dict(client_handlers.handle_evaluate(train_message(config, 1, arrays), context)
                     .content.metric_records["metrics"])
    for released in (train, evaluated):
        assert set(released) <= set(PUBLIC_BOOKKEEPING) | {k for k in released
                                                           if k.startswith("dp-")}
    assert {"dp-loss-sum-noised", "dp-count-noised"} <= set(train)
    assert {"dp-eval-count-noised", "dp-eval-loss-sum-noised"} <= set(evaluated)
    # videomae's only accuracy is the kNN probe, which compares clips: no noised count of it
    has_correct = "dp-eval-correct-noised" in evaluated
    assert has_correct == (objective["pretrain.objective"] == "contrastive")
    assert evaluated["dp-epsilon"] > train["dp-epsilon"]  # the evaluation was charged
