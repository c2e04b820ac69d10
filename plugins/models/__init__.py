"""Model plugins: backbones (inputs to features) and energy heads (features to logits)."""
