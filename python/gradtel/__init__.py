"""gradtel: stream the structure of stochastic gradients from a training process to its local
gradtel agent.

``gradtel.Client`` is the numpy-level client; ``gradtel.torch`` (imported on demand, needs
PyTorch) hooks models: ``watch`` for one process, a DDP communication hook for each rank's local
gradient, and FSDP's owned shards.
"""

from gradtel.client import (
    DTYPES,
    PROTOCOL_MINOR,
    Client,
    GradtelError,
    Stats,
    Tensor,
    dtype_of,
)

__all__ = ["Client", "GradtelError", "Stats", "Tensor", "DTYPES", "PROTOCOL_MINOR", "dtype_of"]
__version__ = "0.1.0"
