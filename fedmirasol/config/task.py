"""The run config's ``[task]`` section: what the clients learn and how it is evaluated."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedmirasol.config.base import Section
from fedmirasol.data.questions import DEFAULT_TYPES, parse_question_types
from fedmirasol.errors import ConfigError

TASKS = ("classification", "videoqa")


class TaskConfig(Section):
    """classification: the clip's class (accuracy). videoqa: a question (or "caption:") per
    clip, answered by the text decoder and scored on the generated text (exact match per
    question type, CIDEr and BLEU-4 of the captions). Synthetic clips get the questions of
    `questions` (the pool is then split by question type); a manifest's rows bring their own
    `question`/`answer` columns, and their captions are scored."""

    name: Literal[TASKS] = "classification"  # type: ignore[valid-type]
    # videoqa: the question types asked (fedmirasol.data.questions), comma-separated
    questions: str = ",".join(DEFAULT_TYPES)
    late_tone: bool = False  # videoqa: every clip ends with an extra tone in its last quarter
    num_beams: int = Field(1, ge=1)  # evaluation decoding: 1 greedy, more: beam search

    @model_validator(mode="after")
    def _check(self) -> "TaskConfig":
        try:
            parse_question_types(self.questions)
        except ValueError as error:
            raise ConfigError(f"config key 'task.questions': {error}") from error
        return self

    @property
    def question_types(self) -> tuple[str, ...]:
        return parse_question_types(self.questions)

    def generation(self) -> dict[str, int]:
        """The decoding options of the evaluation's `generate`."""
        return {"num_beams": self.num_beams}
