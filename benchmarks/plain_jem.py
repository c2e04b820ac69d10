"""A plain PyTorch JEM iteration in the style of the reference JEM code, as a baseline for step_cost.py.

What makes it "reference style" (Grathwohl et al.'s published training loop), each on purpose:

* **separate batches**: one batch of images for the p(x) term and another labelled batch for
  the p(y|x) term;
* **three forward passes** per iteration: the data batch and the SGLD samples for p(x), the
  labelled batch for the classifier;
* **weights not frozen while sampling**: the chains' input gradients are taken with every
  parameter still requiring a gradient (and ``retain_graph=True``), as the reference does; the
  model is put in eval mode for sampling and back in train mode after;
* **fp32, NCHW**: no autocast, default memory format;
* a **replay buffer** of fp32 chains on the host, a fraction ``reinit_freq`` restarted from
  ``U(-1, 1)`` per call, the final chains written back; SGLD ascends ``log p(x) = logsumexp f(x)``:
  ``x <- x + step_size * d logsumexp f(x) / dx + noise * N(0, I)``.

The network is whatever ``JointEnergyModel`` it is given (step_cost.py passes an fp32 NCHW copy
of the recipe's own), ``-model.energy(x)`` being ``logsumexp f(x)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PlainJEM:
    """One reference-style JEM training iteration at a time (:meth:`iteration`)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        input_shape: tuple[int, ...],
        *,
        steps: int = 20,
        step_size: float = 1.0,
        noise: float = 0.01,
        buffer_size: int = 10000,
        reinit_freq: float = 0.05,
        px_weight: float = 1.0,
        pyx_weight: float = 1.0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.steps, self.step_size, self.noise = steps, step_size, noise
        self.reinit_freq = reinit_freq
        self.px_weight, self.pyx_weight = px_weight, pyx_weight
        #: The replay buffer: fp32 chains in ``[-1, 1]`` on the host, ``[buffer_size, *input_shape]``.
        self.buffer = torch.rand(buffer_size, *input_shape) * 2 - 1

    def _start(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Chain starts: ``n`` random buffer entries, a ``reinit_freq`` fraction replaced by noise."""
        slots = torch.randint(0, len(self.buffer), (n,))
        starts = self.buffer[slots]
        fresh = (torch.rand(n) < self.reinit_freq).float().view(n, *([1] * (starts.dim() - 1)))
        starts = fresh * (torch.rand_like(starts) * 2 - 1) + (1 - fresh) * starts
        return starts.to(device), slots

    def sample(self, n: int, device: torch.device) -> Tensor:
        """``n`` SGLD samples (``steps`` ascent steps on ``logsumexp f``), written back to the buffer."""
        self.model.eval()
        starts, slots = self._start(n, device)
        chains = starts.clone().requires_grad_(True)
        for _ in range(self.steps):
            log_px = -self.model.energy(chains)
            (grad,) = torch.autograd.grad(log_px.sum(), [chains], retain_graph=True)
            chains.data += self.step_size * grad + self.noise * torch.randn_like(chains)
        self.model.train()
        final = chains.detach()
        self.buffer[slots] = final.cpu()
        return final

    def iteration(self, x_data: Tensor, x_lab: Tensor, y_lab: Tensor) -> float:
        """One optimiser step on ``px_weight * (E(x_data) - E(x_q)) + pyx_weight * CE(f(x_lab), y_lab)``;
        the loss value."""
        loss = torch.zeros((), device=x_data.device)
        if self.px_weight > 0:
            x_q = self.sample(len(x_data), x_data.device)
            log_p_data = -self.model.energy(x_data)  # forward pass 1
            log_p_samples = -self.model.energy(x_q)  # forward pass 2
            loss = loss + self.px_weight * -(log_p_data.mean() - log_p_samples.mean())
        if self.pyx_weight > 0:
            logits = self.model(x_lab)  # forward pass 3
            loss = loss + self.pyx_weight * F.cross_entropy(logits, y_lab)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())
