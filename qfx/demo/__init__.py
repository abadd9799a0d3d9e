"""Demo models and the demo accuracy table (``python -m qfx.demo.accuracy``)."""

from .models import MODELS, build_model, digits_cnn, digits_encoder, digits_mlp

__all__ = ["MODELS", "build_model", "digits_mlp", "digits_cnn", "digits_encoder"]
