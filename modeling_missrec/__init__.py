"""missrec-hf: MISSRec (and its SASRec baseline) as Hugging Face models.

Importing the package registers the configs and models with the auto classes (`MISSRecModel` with `AutoModel`,
`MISSRecForPreTraining` with `AutoModelForPreTraining`, `MISSRecForSequentialRecommendation` with this package's
`AutoModelForSequentialRecommendation`; `SASRecModel` with `AutoModel`), so saved models load without
`trust_remote_code` when the package is installed, and the `"sequential-recommendation"` pipeline task, so
`pipeline("sequential-recommendation", model=model)` works after `import modeling_missrec`.

The flat modules of this folder other than this file, `auto.py` and `demo.py` are the Hub remote code: they travel
with every saved model (the model, its `sequential-recommendation` pipeline and the files that pipeline serves) and
import only each other and third-party libraries. The library around the model is in `pipelines` (data, training,
evaluation, conversion), `configuration` (presets and recipes) and `hub_cards` (cards, export, the demo page).
"""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from .auto import AutoModelForSequentialRecommendation
from .configuration_missrec import MISSRecConfig
from .configuration_sasrec import SASRecConfig
from .index_missrec import MISSRecItemIndex
from .interest_missrec import ClusteringResult, dpc_knn, interest_tokens, kmeans
from .modeling_missrec import (
    MISSRecForPreTraining,
    MISSRecForSequentialRecommendation,
    MISSRecModel,
    MISSRecModelOutput,
    MISSRecPreTrainedModel,
    MISSRecPreTrainingOutput,
    MISSRecRecommendationOutput,
    MISSRecSequentialRecommendationOutput,
)
from .modeling_sasrec import SASRecModel, SASRecOutput, SASRecPreTrainedModel
from .pipeline_missrec import TASK, SequentialRecommendationPipeline  # importing it registers the pipeline task
from .served_files_missrec import load_item_metadata, load_missrec_adapter, save_catalogue, save_item_metadata
from .utils_missrec import unwrap_missrec

AutoConfig.register(MISSRecConfig.model_type, MISSRecConfig, exist_ok=True)
AutoModel.register(MISSRecConfig, MISSRecModel, exist_ok=True)
AutoModelForPreTraining.register(MISSRecConfig, MISSRecForPreTraining, exist_ok=True)
AutoModelForSequentialRecommendation.register(MISSRecConfig, MISSRecForSequentialRecommendation, exist_ok=True)
AutoConfig.register(SASRecConfig.model_type, SASRecConfig, exist_ok=True)
AutoModel.register(SASRecConfig, SASRecModel, exist_ok=True)

__all__ = [
    "AutoModelForSequentialRecommendation",
    "ClusteringResult",
    "MISSRecConfig",
    "MISSRecForPreTraining",
    "MISSRecForSequentialRecommendation",
    "MISSRecItemIndex",
    "MISSRecModel",
    "MISSRecModelOutput",
    "MISSRecPreTrainedModel",
    "MISSRecPreTrainingOutput",
    "MISSRecRecommendationOutput",
    "MISSRecSequentialRecommendationOutput",
    "SASRecConfig",
    "SASRecModel",
    "SASRecOutput",
    "SASRecPreTrainedModel",
    "SequentialRecommendationPipeline",
    "TASK",
    "dpc_knn",
    "interest_tokens",
    "kmeans",
    "load_item_metadata",
    "load_missrec_adapter",
    "save_catalogue",
    "save_item_metadata",
    "unwrap_missrec",
]
