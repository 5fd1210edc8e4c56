"""missrec-hf: MISSRec as a Hugging Face model.

Importing the package registers `MISSRecConfig` / `MISSRecModel` with `AutoConfig` / `AutoModel`, so saved
models load without `trust_remote_code` when the package is installed.
"""

from transformers import AutoConfig, AutoModel

from .configuration_missrec import MISSRecConfig
from .interest_missrec import ClusteringResult, dpc_knn, interest_tokens, kmeans
from .modeling_missrec import MISSRecModel, MISSRecOutput, MISSRecPreTrainedModel, MISSRecPreTrainingOutput

AutoConfig.register(MISSRecConfig.model_type, MISSRecConfig, exist_ok=True)
AutoModel.register(MISSRecConfig, MISSRecModel, exist_ok=True)

__all__ = [
    "ClusteringResult",
    "MISSRecConfig",
    "MISSRecModel",
    "MISSRecOutput",
    "MISSRecPreTrainedModel",
    "MISSRecPreTrainingOutput",
    "dpc_knn",
    "interest_tokens",
    "kmeans",
]
