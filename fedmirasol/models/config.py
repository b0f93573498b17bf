"""Model configurations: the named Mirasol sizes and the geometry of their inputs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

TubeSpec = tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]
"""A tube type: (kernel, stride, offset), each as (time, height, width)."""

# The TubeViT tube set for 32-frame chunks at 224 px (DESIGN.md section 4).
PAPER_TUBES: tuple[TubeSpec, ...] = (
    ((8, 8, 8), (16, 32, 32), (0, 0, 0)),
    ((16, 4, 4), (6, 32, 32), (4, 8, 8)),
    ((4, 12, 12), (16, 32, 32), (0, 16, 16)),
    ((1, 16, 16), (32, 16, 16), (0, 0, 0)),  # the 2D patches
)

# A tube set laid out for 4-frame chunks at 32 px, the geometry of the CPU configs.
SMALL_TUBES: tuple[TubeSpec, ...] = (
    ((4, 8, 8), (4, 8, 8), (0, 0, 0)),
    ((2, 4, 4), (2, 8, 8), (1, 4, 4)),
    ((1, 8, 8), (4, 8, 8), (2, 0, 0)),  # the 2D patches, on the chunk's third frame
)


ARCHITECTURES = ("mirasol", "latefusion", "leaf-cnn", "leaf-lstm", "leaf-logreg")
# LEAF's reference models (leaf_cnn.py, leaf_lstm.py, leaf_logreg.py) and the LEAF tasks each is
# LEAF's model for (`leaf_task` picks the layout).
LEAF_MODEL_TASKS = {"leaf-cnn": ("femnist", "celeba"), "leaf-lstm": ("shakespeare", "sent140"),
                    "leaf-logreg": ("synthetic",)}
MODALITY_NAMES = ("video", "audio")


@dataclass(frozen=True)
class MirasolConfig:
    """Every size and input-geometry choice of a model: Mirasol, or the late-fusion baseline.

    The parameter count depends on none of `num_frames`/`fps` beyond one chunk:
    more frames means more chunks, each processed by the same weights.
    `architecture = "latefusion"` builds the TimeSformer + AST baseline (late_fusion.py) from the
    same geometry and widths (`video_depth`/`audio_depth` are its encoders' depths,
    `audio_patch` its spectrogram patches) plus the late-fusion fields below; with
    `text_weight` > 0 it also gets a text decoder over its two pooled features.
    """

    name: str = "custom"
    architecture: str = "mirasol"  # "mirasol" or "latefusion"
    # Input geometry.
    image_size: int = 32
    frames_per_chunk: int = 4
    num_frames: int = 16  # default clip length; any multiple of frames_per_chunk works
    fps: float = 8.0
    sample_rate: int = 16_000
    n_mels: int = 32
    audio_patch: tuple[int, int] = (16, 8)  # (spectrogram frames, mel bins)
    tubes: tuple[TubeSpec, ...] = SMALL_TUBES
    tube_reference: tuple[int, int] = (4, 32)  # (frames, pixels) the tubes were laid out for
    # Widths and depths.
    width: int = 64
    heads: int = 4
    mlp_ratio: float = 2.0
    video_depth: int = 1
    audio_depth: int = 1
    combiner: str = "transformer"  # "transformer" or "ttm"
    combiner_depth: int = 1
    latents_per_chunk: int = 4  # m
    ttm_memory: int = 8  # Token Turing Machine memory size
    ar_depth: int = 1
    text_depth: int = 1
    max_text_len: int = 64
    num_classes: int = 8
    dropout: float = 0.0
    fusion: str = "chunked"  # "chunked" (Mirasol) or "joint" (one transformer over all chunks)
    # Input normalization stem (input_norm.py): a learned per-channel affine on the video pixels
    # and on the log-mel bins, a normalization-type module that FedBN keeps on each client.
    # Off by default: with it off the named configs' parameters are exactly as before.
    input_norm: bool = False
    # Loss weights.
    class_weight: float = 1.0
    text_weight: float = 0.2
    latent_weight: float = 0.1
    # Late-fusion baseline only (architecture = "latefusion").
    video_patch: int = 16  # TimeSformer: square patches of each frame, in pixels
    audio_stride: tuple[int, int] = (10, 10)  # AST: patch strides (spectrogram frames, mel bins)
    alpha: float = 1.0  # modality weight: fixed, or the initial value when learned
    alpha_modality: str = "audio"  # the pooled feature alpha scales: "audio" or "video"
    learn_alpha: bool = False
    freeze_encoders: bool = False  # train only the fusion head (and alpha, absent tokens, input stem)
    head_dropout: float = 0.5
    # LEAF reference models only (architecture = "leaf-cnn" | "leaf-lstm" | "leaf-logreg"); a
    # LEAF run (data.source = "leaf") sets them, and num_classes, from its data.
    leaf_task: str = ""  # the LEAF task whose reference layout to build
    leaf_vocab: int = 81  # leaf-lstm: rows of the token embedding
    leaf_input_dim: int = 60  # leaf-logreg: features per sample

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.architecture == "latefusion":
            self._check_late_fusion()
        if self.architecture in LEAF_MODEL_TASKS:
            self._check_leaf()
        if self.combiner not in ("transformer", "ttm"):
            raise ValueError(f"combiner must be 'transformer' or 'ttm', got {self.combiner!r}")
        if self.fusion not in ("chunked", "joint"):
            raise ValueError(f"fusion must be 'chunked' or 'joint', got {self.fusion!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.num_frames % self.frames_per_chunk:
            raise ValueError(
                f"num_frames {self.num_frames} is not a multiple of frames_per_chunk "
                f"{self.frames_per_chunk}"
            )
        samples = self.frames_per_chunk / self.fps * self.sample_rate
        if abs(samples - round(samples)) > 1e-6:
            raise ValueError(
                f"a chunk of {self.frames_per_chunk} frames at {self.fps} fps is "
                f"{samples} audio samples at {self.sample_rate} Hz; pick values that give "
                "a whole number so audio and video chunks cover the same seconds"
            )

    def _check_late_fusion(self) -> None:
        if self.alpha_modality not in MODALITY_NAMES:
            raise ValueError(f"alpha_modality must be one of {MODALITY_NAMES}, got {self.alpha_modality!r}")
        if self.image_size % self.video_patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of video_patch {self.video_patch}")
        if min(self.audio_stride) < 1:
            raise ValueError(f"audio_stride must be positive, got {self.audio_stride}")
        if self.latent_weight:
            raise ValueError(
                "the late-fusion model predicts nothing across time: latent_weight must be 0"
            )

    def _check_leaf(self) -> None:
        tasks = LEAF_MODEL_TASKS[self.architecture]
        if self.leaf_task not in tasks:
            raise ValueError(f"{self.architecture} is LEAF's model for {tasks}; leaf_task is "
                             f"{self.leaf_task!r}")
        if self.text_weight or self.latent_weight:
            raise ValueError("LEAF's reference models have no text decoder and no latent "
                             "prediction: text_weight and latent_weight must be 0")
        if min(self.leaf_vocab, self.leaf_input_dim, self.num_classes) < 1:
            raise ValueError("leaf_vocab, leaf_input_dim and num_classes must be positive")

    @property
    def samples_per_chunk(self) -> int:
        """Audio samples covering exactly the seconds of one video chunk."""
        return round(self.frames_per_chunk / self.fps * self.sample_rate)

    @property
    def num_chunks(self) -> int:
        return self.num_frames // self.frames_per_chunk

    @property
    def num_samples(self) -> int:
        """Audio samples of a default-length clip."""
        return self.num_chunks * self.samples_per_chunk

    def replace(self, **changes: Any) -> "MirasolConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MirasolConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KeyError(f"unknown model config keys: {', '.join(unknown)}")
        values = dict(values)
        if "tubes" in values:
            values["tubes"] = tuple(tuple(tuple(part) for part in tube) for tube in values["tubes"])
        for key in ("audio_patch", "tube_reference", "audio_stride"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


NAMED_CONFIGS: dict[str, MirasolConfig] = {
    # CPU tests and the default simulation: under 2M parameters. Its log-mel patches span all
    # 32 mel bins (4 frames each, as many weights as 16 x 8): with 8-bin bands a low and a high
    # tone lit different tokens of nearly the same content, so a token did not tell the pitch
    # and the model learned it only after hundreds of steps, at 256 frames not at all.
    "tiny": MirasolConfig(name="tiny", audio_patch=(4, 32)),
    # CPU demo and edge clients.
    "small": MirasolConfig(
        name="small", image_size=64, n_mels=64, audio_patch=(16, 16), tube_reference=(4, 32),
        width=128, heads=4, video_depth=2, audio_depth=2, combiner_depth=2, ar_depth=2,
        text_depth=2, latents_per_chunk=8, ttm_memory=16,
    ),
    # A GPU client.
    "base": MirasolConfig(
        name="base", image_size=224, frames_per_chunk=16, num_frames=64, fps=16.0, n_mels=128,
        audio_patch=(16, 16), tubes=PAPER_TUBES, tube_reference=(32, 224), width=512, heads=8,
        mlp_ratio=4.0, video_depth=6, audio_depth=6, combiner_depth=2, ar_depth=4, text_depth=4,
        latents_per_chunk=16, ttm_memory=32, max_text_len=128,
    ),
    # The paper's scale (about 3B parameters); build it on the meta device.
    "mirasol3b": MirasolConfig(
        name="mirasol3b", image_size=224, frames_per_chunk=32, num_frames=512, fps=16.0,
        n_mels=128, audio_patch=(16, 16), tubes=PAPER_TUBES, tube_reference=(32, 224),
        width=2048, heads=16, mlp_ratio=4.0, video_depth=24, audio_depth=12, combiner_depth=4,
        ar_depth=8, text_depth=8, latents_per_chunk=32, ttm_memory=64, max_text_len=256,
    ),
}

# The late-fusion baseline (TimeSformer + AST), with text and latent terms off.
_LATE_FUSION = dict(
    architecture="latefusion", audio_patch=(16, 16), audio_stride=(10, 10), text_weight=0.0,
    latent_weight=0.0,
)
NAMED_CONFIGS |= {
    # Same geometry as `tiny` (the same synthetic clips), about as many parameters. The head's
    # dropout is off at these widths: with 0.5 on its 85- and 43-unit layers the tiny model
    # stayed at chance on the synthetic task (README, late-fusion section).
    "latefusion-tiny": NAMED_CONFIGS["tiny"].replace(
        name="latefusion-tiny", video_patch=8, video_depth=2, audio_depth=2, head_dropout=0.0,
        **_LATE_FUSION,
    ),
    "latefusion-small": NAMED_CONFIGS["small"].replace(
        name="latefusion-small", video_depth=2, audio_depth=2, head_dropout=0.0, **_LATE_FUSION
    ),
    # The published sizes: TimeSformer-Base (8 frames of 224 px, 16 px patches) and AST-Base
    # (10 s of 128-bin log-mel, 16x16 patches with stride 10), 768 wide, 12 layers each.
    "latefusion-base": MirasolConfig(
        name="latefusion-base", image_size=224, frames_per_chunk=8, num_frames=8, fps=0.8,
        n_mels=128, width=768, heads=12, mlp_ratio=4.0, video_depth=12, audio_depth=12,
        video_patch=16, **_LATE_FUSION,
    ),
}
NAMED_CONFIGS["latefusion"] = NAMED_CONFIGS["latefusion-base"].replace(name="latefusion")

# LEAF's reference models with the geometry of their first task (a LEAF run takes its task's).
_LEAF = dict(text_weight=0.0, latent_weight=0.0)
NAMED_CONFIGS |= {
    "leaf-cnn": MirasolConfig(name="leaf-cnn", architecture="leaf-cnn", leaf_task="femnist",
                              image_size=28, num_classes=62, **_LEAF),
    "leaf-lstm": MirasolConfig(name="leaf-lstm", architecture="leaf-lstm",
                               leaf_task="shakespeare", leaf_vocab=81, num_classes=80, **_LEAF),
    "leaf-logreg": MirasolConfig(name="leaf-logreg", architecture="leaf-logreg",
                                 leaf_task="synthetic", leaf_input_dim=60, num_classes=10,
                                 **_LEAF),
}


def get_config(name: str, **overrides: Any) -> MirasolConfig:
    """Return a named config (`tiny` ... `mirasol3b`, `latefusion-tiny` ... `latefusion`,
    `leaf-cnn`, `leaf-lstm`, `leaf-logreg`) with overrides applied."""
    if name not in NAMED_CONFIGS:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(NAMED_CONFIGS)}")
    return NAMED_CONFIGS[name].replace(**overrides) if overrides else NAMED_CONFIGS[name]
