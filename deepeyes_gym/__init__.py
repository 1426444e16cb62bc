"""deepeyes-gym: agentic multimodal reasoning (the DeepEyesV2 recipe) as Gymnasium environments."""

from .envs.registration import ENV_IDS, register_envs

__version__ = "0.1.0"

register_envs()

__all__ = ["ENV_IDS", "__version__"]
