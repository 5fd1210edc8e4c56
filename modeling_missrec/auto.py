"""`AutoModelForSequentialRecommendation`: the auto class of sequential-recommendation heads.

`transformers` has no auto class for this task, so the package defines one the way `transformers` defines its own:
`AutoModelForSequentialRecommendation.from_pretrained(folder)` gives the registered head of the folder's config
([`MISSRecForSequentialRecommendation`] for MISSRec), and with `trust_remote_code=True` the head the folder's
`auto_map` names (its own copy of the modelling code).
"""

from __future__ import annotations

from collections import OrderedDict

from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES


class AutoModelForSequentialRecommendation(_BaseAutoModelClass):
    """Loads the sequential-recommendation head of a saved model (see the module docstring)."""

    _model_mapping = _LazyAutoMapping(CONFIG_MAPPING_NAMES, OrderedDict())
