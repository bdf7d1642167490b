"""Dataset fingerprint and plans (nnU-Net style, SAM-specific)."""
