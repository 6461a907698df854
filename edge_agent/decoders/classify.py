"""Classification: logits or probabilities of shape (1, C) -> Classification."""

from __future__ import annotations

import numpy as np

from edge_agent.decoders.results import Classification


def decode_classify(outputs: list[np.ndarray], num_classes: int) -> Classification:
    out = np.asarray(outputs[0], dtype=np.float32)
    if out.shape != (1, num_classes):
        raise ValueError(f"classifier output must have shape (1, {num_classes}), got {out.shape}")
    v = out[0]
    is_prob = bool(np.all(v >= 0) and abs(float(v.sum()) - 1.0) < 1e-3)
    if not is_prob:
        e = np.exp(v - v.max())
        v = e / e.sum()
    return Classification(v.astype(np.float32))
