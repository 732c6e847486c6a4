"""des4-hf: DeS4 semi-supervised semantic segmentation for timm + transformers."""
