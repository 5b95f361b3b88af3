"""Networks (mlp.py, conv.py), conditioning methods (conditioning.py) and the CVAE (cvae.py)."""

from cvae_exp.models.cvae import CVAE, CVAEOutput

__all__ = ["CVAE", "CVAEOutput"]
