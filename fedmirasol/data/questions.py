"""The video-QA question types and their prompts (no torch: the config reads them).

The clips, the answers and the dataset are in `fedmirasol.data.videoqa`.
"""

from __future__ import annotations

# name -> the prompt (the answer follows it)
QUESTIONS: dict[str, str] = {
    "caption": "caption: ",
    "shape": "what shape is it? ",
    "pitch": "are the tones high or low? ",
    "sync": "do the tones match the flashes? ",
    "count": "how many flashes? ",
    "order": "what came first? ",
    "first": "what pitch is the first tone? ",
    "last": "what pitch is the last tone? ",
}
OPEN = "open"  # a manifest's own question (its `question` column), scored by exact match
QUESTION_TYPES = (*QUESTIONS, OPEN)
CAPTION = "caption"  # the one type scored as a caption (CIDEr, BLEU-4), not by exact match
DEFAULT_TYPES = ("caption", "shape", "pitch", "sync", "count", "order")


def parse_question_types(text: str | tuple[str, ...]) -> tuple[str, ...]:
    """"shape, pitch" -> ("shape", "pitch"), each checked against QUESTION_TYPES."""
    names = tuple(part.strip() for part in (text.split(",") if isinstance(text, str) else text)
                  if part.strip())
    unknown = [name for name in names if name not in QUESTIONS]  # OPEN: manifests only
    if unknown or not names:
        raise ValueError(f"question types must be a non-empty list of {tuple(QUESTIONS)}, "
                         f"got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"question types repeat: {text!r}")
    return names
