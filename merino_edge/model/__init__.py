"""The MeRino model as a `transformers` causal LM, registered with the Auto classes on import.

    import merino_edge.model  # noqa: F401  (registers model_type "merino")
    model = AutoModelForCausalLM.from_pretrained("ckpt/")
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from merino_edge.model.configuration import MeRinoConfig
from merino_edge.model.modeling import (
    MeRinoAttention,
    MeRinoBlock,
    MeRinoForCausalLM,
    MeRinoLayer,
    MeRinoMLP,
    MeRinoModel,
    MeRinoPreTrainedModel,
)

AutoConfig.register(MeRinoConfig.model_type, MeRinoConfig, exist_ok=True)
AutoModel.register(MeRinoConfig, MeRinoModel, exist_ok=True)
AutoModelForCausalLM.register(MeRinoConfig, MeRinoForCausalLM, exist_ok=True)

__all__ = [
    "MeRinoAttention",
    "MeRinoBlock",
    "MeRinoConfig",
    "MeRinoForCausalLM",
    "MeRinoLayer",
    "MeRinoMLP",
    "MeRinoModel",
    "MeRinoPreTrainedModel",
]
