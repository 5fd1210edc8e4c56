"""missrec-hf: MISSRec (and its SASRec baseline) as Hugging Face models.

Importing the package registers the configs and models with the auto classes (`MISSRecModel` with `AutoModel`,
`MISSRecForPreTraining` with `AutoModelForPreTraining`, `MISSRecForSequentialRecommendation` with this package's
`AutoModelForSequentialRecommendation`; `SASRecModel` with `AutoModel`), so saved models load without
`trust_remote_code` when the package is installed, and the `"sequential-recommendation"` pipeline task, so
`pipeline("sequential-recommendation", model=model)` works after `import modeling_missrec`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from .auto import AutoModelForSequentialRecommendation
from .configuration_missrec import MISSRecConfig
from .configuration_sasrec import SASRecConfig
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
    unwrap_missrec,
)
from .modeling_sasrec import SASRecModel, SASRecOutput, SASRecPreTrainedModel

AutoConfig.register(MISSRecConfig.model_type, MISSRecConfig, exist_ok=True)
AutoModel.register(MISSRecConfig, MISSRecModel, exist_ok=True)
AutoModelForPreTraining.register(MISSRecConfig, MISSRecForPreTraining, exist_ok=True)
AutoModelForSequentialRecommendation.register(MISSRecConfig, MISSRecForSequentialRecommendation, exist_ok=True)
AutoConfig.register(SASRecConfig.model_type, SASRecConfig, exist_ok=True)
AutoModel.register(SASRecConfig, SASRecModel, exist_ok=True)

from .pipelines import recommendation as _recommendation  # noqa: E402,F401  (registers the pipeline task)

__all__ = [
    "AutoModelForSequentialRecommendation",
    "ClusteringResult",
    "MISSRecConfig",
    "MISSRecForPreTraining",
    "MISSRecForSequentialRecommendation",
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
    "dpc_knn",
    "interest_tokens",
    "kmeans",
    "unwrap_missrec",
]
