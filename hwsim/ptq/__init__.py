"""Post-training quantization recipes (docs/ptq.md): how parameters are chosen under a profile.

Public API: :func:`load_recipe`, :class:`Recipe`, :func:`builtin_recipes`,
:func:`compile_with_recipe` (what ``compile_model(..., recipe=...)`` calls) and
:func:`replace_weights` (install integer weights from AdaRound/AdaQuant or any other method).
"""

from hwsim.ptq.pipeline import bn_stats, compile_with_recipe, replace_weights
from hwsim.ptq.recipe import PROFILE, LapqOptions, Recipe, builtin_recipes, load_recipe

__all__ = ["PROFILE", "LapqOptions", "Recipe", "bn_stats", "builtin_recipes", "compile_with_recipe", "load_recipe",
           "replace_weights"]
