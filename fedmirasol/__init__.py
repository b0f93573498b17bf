"""fedmirasol: federated, privacy-preserving training of the Mirasol audio-video-text model."""

__version__ = "0.1.0"
