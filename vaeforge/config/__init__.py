"""Recipes (YAML) + ``key=value`` overrides, validated by the typed schema in :mod:`.schema`."""
from .loader import available_recipes, load_config, save_config, validate_options
from .schema import RunConfig

__all__ = ["RunConfig", "available_recipes", "load_config", "save_config", "validate_options"]
