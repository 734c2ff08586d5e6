"""Model loading, the offline tiny presets and the per-family adapters."""

from core.models.families import ModelFamily, family_of
from core.models.loading import LoadedModel, load_model, load_pipeline

__all__ = ["LoadedModel", "ModelFamily", "family_of", "load_model", "load_pipeline"]
