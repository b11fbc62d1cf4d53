"""Saliency-guided self-supervised pre-training for diabetic-retinopathy grading."""

__version__ = "0.1.0"
