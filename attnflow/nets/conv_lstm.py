"""Convolutional LSTM cell (Shi et al., "Convolutional LSTM Network: A Machine Learning Approach
for Precipitation Nowcasting", NeurIPS 2015): the recurrent network that computes the means and
scales of mARFlow's channel-autoregressive prior
(:class:`~attnflow.flows.autoregressive_prior.ChannelAutoregressive`)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ConvLSTMCell"]


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM cell (Shi et al. 2015):
    ``(i, f, o, g) = conv([input, h])``, ``c' = sigma(f) c + sigma(i) tanh(g)``,
    ``h' = sigma(o) tanh(c')``."""

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the spatial size, got {kernel_size}")
        self.hidden = hidden
        self.gates = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel_size, padding=kernel_size // 2)

    def forward(self, inp: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h, c = state
        i, f, o, g = self.gates(torch.cat([inp, h], 1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
