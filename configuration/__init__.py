"""What a run is made of: model presets (`models/*.json`, read by `presets`), training recipes (`recipes/*.yaml`,
read by `recipe`), Accelerate configs (`accelerate/`) and search spaces for `tune.py` (`search/`); installed as
`modeling_missrec.configuration`."""

from .presets import available_presets, check_config_overrides, load_preset
from .recipe import (
    DEBUG_HELP,
    TrainingRecipe,
    default_recipe_path,
    errors_in_one_line,
    load_recipe,
    parse_config_overrides,
    parse_recipe_args,
)

__all__ = [
    "DEBUG_HELP",
    "TrainingRecipe",
    "available_presets",
    "check_config_overrides",
    "default_recipe_path",
    "errors_in_one_line",
    "load_preset",
    "load_recipe",
    "parse_config_overrides",
    "parse_recipe_args",
]
