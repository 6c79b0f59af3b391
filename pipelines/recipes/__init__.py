"""Recipes: what a sweep runs. Schema (pydantic, unknown keys are errors) and resolution.

``from pipelines import recipes`` gives the schema classes and the resolution
functions in one namespace; model resolution (aliases, Hub ids, paths) is in
``pipelines.recipes.models``.
"""

from pipelines.recipes.resolve import (  # noqa: F401
    RECIPES_DIR,
    available,
    deep_merge,
    load_recipe,
    load_scheme,
    load_suite,
    parse_set_overrides,
    resolve_recipe,
    unknown_name_message,
    validate,
)
from pipelines.recipes.schema import (  # noqa: F401
    BenchmarkConfig,
    CalibrationConfig,
    CalibrationOverride,
    ComputeChoice,
    DType,
    ModelRecipe,
    PerplexityConfig,
    ResolvedRecipe,
    Resources,
    SchemeRecipe,
    Strict,
    SuiteRecipe,
    TasksConfig,
)
