"""Video QA and captioning results side by side: per question type exact match, CIDEr and
BLEU-4 of finished runs, with each question type's chance level (the share of its most
frequent answer on the same test set, what a model that ignores the clip can reach).

    python benchmarks/videoqa_table.py runs/videoqa-<time> [runs/videoqa-<time> ...]

Each run directory gives the server's test-set scores (centralized evaluation of the final
global model), the clients' validation scores (weighted over the clients) and, if it was run
with `fedmirasol simulate --baseline`, the centralized baseline on the pooled client data;
a `fedmirasol train --task videoqa` directory gives its final validation scores.
`--classifier` adds, per run, the final global model's classification head on the same test
set, read as its three attributes (shape, pitch, in sync): what the question types' exact
match is compared with.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from fedmirasol.config import from_table
from fedmirasol.data.questions import CAPTION
from fedmirasol.task import data as task_data


def chance(config_path: Path) -> dict[str, float]:
    """Per question type, the most frequent answer's share on the run's test set."""
    config = from_table(json.loads(config_path.read_text()))
    test = task_data.synthetic_dataset(config, config.data.test_clips,
                                       seed=config.seed + task_data.TEST_SEED_OFFSET)
    answers: dict[str, Counter] = defaultdict(Counter)
    for index in range(len(test)):
        kind, _, answer = test.question(index)
        answers[kind][answer] += 1
    return {kind: max(c.values()) / sum(c.values()) for kind, c in answers.items()
            if kind != CAPTION}


def classifier_attributes(run: Path) -> dict[str, float]:
    """Accuracy of the final model's class predictions on the test set, per attribute."""
    import torch

    from fedmirasol.models import build_model

    config = from_table(json.loads((run / "config.json").read_text()))
    saved = torch.load(run / "final_model.pt", weights_only=True)
    model = build_model(config.model.mirasol)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    data_config = task_data.synthetic_config(config)
    test = task_data.test_dataset(config)
    hits = Counter()
    with torch.no_grad():
        for batch in task_data.loader(test, config.client.eval_batch_size, shuffle=False):
            predictions = model(batch).logits.argmax(dim=-1).tolist()
            for predicted, label in zip(predictions, batch["label"].tolist()):
                for name, a, b in zip(("shape", "pitch", "sync"), data_config.decompose(predicted),
                                      data_config.decompose(label)):
                    hits[name] += a == b
    return {name: hits[name] / len(test) for name in ("shape", "pitch", "sync")}


def rows(run: Path) -> list[tuple[str, dict[str, float]]]:
    if (run / "summary.json").is_file():  # fedmirasol train
        summary = json.loads((run / "summary.json").read_text())
        return [(f"{run.name} (train, val)", summary.get("final_val_text", {}))]
    report = json.loads((run / "report.json").read_text())
    found = [(f"{run.name} (server test)", report.get("final_centralized_text", {})),
             (f"{run.name} (clients' val)", report.get("final_federated_text", {}))]
    if "centralized_baseline_text" in report:
        found.append((f"{run.name} (centralized baseline, test)",
                      report["centralized_baseline_text"]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--classifier", action="store_true",
                        help="also the final models' class predictions per attribute")
    args = parser.parse_args()
    table = [row for run in args.runs for row in rows(run)]
    kinds = sorted({key[3:] for _, scores in table for key in scores if key.startswith("em_")})
    header = ["run", "EM", *kinds, "CIDEr", "BLEU-4"]
    print(" | ".join(header))
    config = next((run / "config.json" for run in args.runs if (run / "report.json").is_file()),
                  None)
    if config is not None:
        levels = chance(config)
        print(" | ".join(["chance (most frequent answer, test set)", "",
                          *(f"{levels.get(k, float('nan')):.3f}" for k in kinds), "", ""]))
    for name, scores in table:
        def fmt(key: str) -> str:
            return f"{scores[key]:.3f}" if key in scores else "-"

        print(" | ".join([name, fmt("exact_match"), *(fmt(f"em_{k}") for k in kinds),
                          fmt("cider"), f"{scores['bleu4']:.1f}" if "bleu4" in scores else "-"]))
    if args.classifier:
        for run in args.runs:
            if (run / "final_model.pt").is_file():
                attributes = classifier_attributes(run)
                print(f"{run.name}: classification head on the test set, per attribute: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in attributes.items()))


if __name__ == "__main__":
    main()
