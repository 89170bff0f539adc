"""Arithmetic precision: autocast regions and fp16 loss scaling.

Weights and optimizer state stay fp32 in every mode (fp32 master weights). bf16 and
fp16 run the forward pass under ``torch.autocast``; fp16 also scales the loss, because
fp16 gradients below about 6e-8 flush to zero.
"""

from __future__ import annotations

import contextlib

import torch

from clip.config import Config

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Return the autocast region for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


class LossScaler:
    """fp16 loss scaling around ``torch.amp.GradScaler``.

    ``loss_scaling`` > 0 keeps that scale fixed (static scaling, as the Graphcore example
    did); 0 grows and backs off the scale dynamically. Either way a step whose gradients
    contain inf or NaN is skipped. In fp32 and bf16 every method passes through.
    """

    def __init__(self, config: Config, device: torch.device) -> None:
        self.enabled = config.execution.precision == "fp16"
        self.static_scale = config.optimizer.loss_scaling or None
        init_scale = self.static_scale or 2.0 ** 16
        self.scaler = torch.amp.GradScaler(device.type, init_scale=init_scale,
                                           enabled=self.enabled)
        self._skipped = torch.zeros(())

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the scale in place, before clipping them."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Run the optimizer step unless a gradient overflowed, then update the scale."""
        self.scaler.step(optimizer)
        if not self.enabled:
            return
        # Summed as a tensor so that counting does not synchronise with the device.
        found_inf = self.scaler._found_inf_per_device(optimizer)
        for found in found_inf.values():
            self._skipped = self._skipped.to(found.device) + found
        self.scaler.update(self.static_scale)

    @property
    def skipped_steps(self) -> int:
        """Steps skipped so far because a gradient overflowed."""
        return int(self._skipped.item())

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scaler.load_state_dict(state["scaler"])
        self._skipped = torch.tensor(float(state["skipped_steps"]))
