"""Real audio-video ingestion: manifests of media files decoded with PyAV into model samples.

One module per job: `container` (open + errors), `probe` (what a file holds), `decode` (frames
on the model's grid by pts, 16 kHz mono audio), `sampling` (clip windows), `transforms`
(resize, crop, normalize), `cache` (decode cache on disk), `manifest` / `adapters` (clip lists),
`dataset` (torch Dataset, skip counting, `load_manifest_datasets`), `evaluate` (dense
evaluation), `partition`, `report` (`data inspect`), `synth` (`data synth`), `writer` (PyAV
encoder).
"""

from fedmirasol.data.media.cache import DecodeCache
from fedmirasol.data.media.dataset import MediaClipDataset, load_manifest_datasets, media_loader
from fedmirasol.data.media.decode import DecodedMedia, DecodeSettings, decode_media
from fedmirasol.data.media.errors import REASONS, MediaError
from fedmirasol.data.media.evaluate import evaluate_dense
from fedmirasol.data.media.manifest import ClipRecord, read_manifest, write_manifest
from fedmirasol.data.media.sampling import average_clip_predictions
from fedmirasol.data.media.writer import write_media_file

__all__ = [
    "REASONS",
    "ClipRecord",
    "DecodeCache",
    "DecodeSettings",
    "DecodedMedia",
    "MediaClipDataset",
    "MediaError",
    "average_clip_predictions",
    "decode_media",
    "evaluate_dense",
    "load_manifest_datasets",
    "media_loader",
    "read_manifest",
    "write_manifest",
    "write_media_file",
]
