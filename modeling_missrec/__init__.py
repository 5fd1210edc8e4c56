"""missrec-hf: MISSRec (and its SASRec baseline) as Hugging Face models.

Importing the package registers `MISSRecConfig` / `MISSRecModel` and `SASRecConfig` / `SASRecModel` with
`AutoConfig` / `AutoModel`, so saved models load without `trust_remote_code` when the package is installed, and
the `"sequential-recommendation"` pipeline task, so `pipeline("sequential-recommendation", model=model)` works
after `import modeling_missrec`.
"""

from transformers import AutoConfig, AutoModel

from .configuration_missrec import MISSRecConfig
from .configuration_sasrec import SASRecConfig
from .interest_missrec import ClusteringResult, dpc_knn, interest_tokens, kmeans
from .modeling_missrec import MISSRecModel, MISSRecOutput, MISSRecPreTrainedModel, MISSRecPreTrainingOutput
from .modeling_sasrec import SASRecModel, SASRecOutput, SASRecPreTrainedModel

AutoConfig.register(MISSRecConfig.model_type, MISSRecConfig, exist_ok=True)
AutoModel.register(MISSRecConfig, MISSRecModel, exist_ok=True)
AutoConfig.register(SASRecConfig.model_type, SASRecConfig, exist_ok=True)
AutoModel.register(SASRecConfig, SASRecModel, exist_ok=True)

from .pipelines import recommendation as _recommendation  # noqa: E402,F401  (registers the pipeline task)

__all__ = [
    "ClusteringResult",
    "MISSRecConfig",
    "MISSRecModel",
    "MISSRecOutput",
    "MISSRecPreTrainedModel",
    "MISSRecPreTrainingOutput",
    "SASRecConfig",
    "SASRecModel",
    "SASRecOutput",
    "SASRecPreTrainedModel",
    "dpc_knn",
    "interest_tokens",
    "kmeans",
]
