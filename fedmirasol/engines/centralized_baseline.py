"""The reference a federated run is judged against: the same model trained centrally on the
union of all clients' training data, for the same number of passes, tested on the same
server test set."""

from __future__ import annotations

import time
import torch

from fedmirasol.config import RunConfig
from fedmirasol.task import data as client_data
from fedmirasol.core.seeds import seed_for
from fedmirasol.task.model import init_model
from fedmirasol.training.centralized import TrainSettings, one_cycle_optimizer
from fedmirasol.training.device import resolve_device
from fedmirasol.training.loop import evaluate, train_epochs
from fedmirasol.training.text_eval import count_key


def centralized_baseline(config: RunConfig, epochs: int | None = None
                         ) -> dict[str, float]:
    """Train on the pooled client data with the project's centralized recipe (the one of
    `fedmirasol train`: AdamW, one-cycle, batch 32), by default for num-rounds x local-epochs
    epochs (the passes each client's data gets in the federated run); return the test accuracy
    on the server's test set."""
    started = time.perf_counter()
    client = config.client
    torch.set_num_threads(client.threads)  # as a simulated client trains
    model = init_model(config)
    device = resolve_device(client.device)
    model.to(device)
    settings = TrainSettings(epochs=epochs or config.num_rounds * client.local_epochs)
    train = client_data.pooled_train(config)
    seed = seed_for(config.seed, 0xCE17)
    torch.manual_seed(seed)
    loader = client_data.loader(train, settings.batch_size, shuffle=True, seed=seed)
    optimizer, scheduler = one_cycle_optimizer(model, settings, len(loader))
    train_metrics = train_epochs(model, loader, optimizer, epochs=settings.epochs, device=device,
                                 scheduler=scheduler)
    test = evaluate(model, client_data.loader(client_data.test_dataset(config),
                                              client.eval_batch_size, shuffle=False),
                    device=device, generation=config.task.generation())
    text = {key: value for key, value in test.items() if count_key(key)}
    return {"centralized_baseline_accuracy": test["accuracy"],
            **({"centralized_baseline_text": text} if text else {}),
            "centralized_baseline_loss": test["loss"],
            "centralized_baseline_train_loss": train_metrics["loss"],
            "centralized_baseline_epochs": float(settings.epochs),
            "centralized_baseline_examples": float(len(train)),
            "centralized_baseline_seconds": time.perf_counter() - started}
