"""How the class label enters a network.

Each network (encoder, decoder) gets its own `Conditioning` instance and calls it at
two points: `join` on its input (features or image channels) and one `modulator` per
hidden layer. A new method is one subclass here plus one YAML file in
configs/conditioning/.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Conditioning(nn.Module):
    """Base class: the label is ignored (an unconditional VAE)."""

    is_conditional = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    @property
    def extra_inputs(self) -> int:
        """Features (flat inputs) or channels (image inputs) that `join` adds."""
        return 0

    def join(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return inputs

    def modulator(self, num_features: int) -> nn.Module:
        return Unmodulated()


class Unmodulated(nn.Module):
    def forward(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return hidden


class Concat(Conditioning):
    """One-hot label concatenated to the input: as features for flat inputs, as
    constant label maps (extra channels) for images."""

    is_conditional = True

    @property
    def extra_inputs(self) -> int:
        return self.num_classes

    def join(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(labels, self.num_classes).to(inputs.dtype)
        if inputs.dim() == 4:
            one_hot = one_hot[:, :, None, None].expand(-1, -1, *inputs.shape[2:])
        return torch.cat([inputs, one_hot], dim=1)


class FiLM(Conditioning):
    """Feature-wise scale and shift of every hidden layer (Perez et al., 2018),
    from a per-layer label embedding initialised to zero, so training starts
    at the identity (the unconditional network)."""

    is_conditional = True

    def modulator(self, num_features: int) -> nn.Module:
        return FiLMLayer(self.num_classes, num_features)


class FiLMLayer(nn.Module):
    def __init__(self, num_classes: int, num_features: int):
        super().__init__()
        self.scale_and_shift = nn.Embedding(num_classes, 2 * num_features)
        nn.init.zeros_(self.scale_and_shift.weight)

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift(labels).to(hidden.dtype).chunk(2, dim=1)
        if hidden.dim() == 4:
            scale, shift = scale[:, :, None, None], shift[:, :, None, None]
        return hidden * (1 + scale) + shift


class ConditionedLayers(nn.Module):
    """`layer -> modulator -> ReLU` for each layer: the hidden stack of every network."""

    def __init__(self, layers: list[nn.Module], widths: list[int], conditioning: Conditioning):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.modulators = nn.ModuleList(conditioning.modulator(width) for width in widths)

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        for layer, modulate in zip(self.layers, self.modulators):
            hidden = F.relu(modulate(layer(hidden), labels))
        return hidden
