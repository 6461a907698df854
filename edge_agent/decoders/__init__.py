"""Model output -> validated results. The same decoders run on devices and in server-side evaluation."""

from edge_agent.decoders.base import decoder_for
from edge_agent.decoders.results import Classification, Detections

__all__ = ["Classification", "Detections", "decoder_for"]
