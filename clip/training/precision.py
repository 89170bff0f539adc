"""Arithmetic precision: autocast regions, fp16 loss scaling and the bf16 working copy.

The model's weights and the optimizer state stay fp32 in every mode (fp32 master weights).
bf16 and fp16 run the forward pass under ``torch.autocast``; fp16 also scales the loss,
because fp16 gradients below about 6e-8 flush to zero. On the CPU, bf16 runs the passes on
a :class:`Bf16WorkingCopy` of the model instead of letting autocast cast each weight at each
use, with the same results. Evaluation stores those weights in the autocast dtype once
(:func:`cast_matmul_weights`), also with the same results.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from clip.config import Config

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Return the autocast region for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def is_matmul_weight(name: str, parameter: torch.Tensor) -> bool:
    """Return True for a matmul weight, a 2-D parameter other than an embedding table.

    Autocast casts these to its dtype at every use. Embedding tables are 2-D too, but
    autocast leaves their lookups in fp32.
    """
    return parameter.ndim == 2 and "embedding" not in name


@torch.no_grad()
def cast_matmul_weights(model: nn.Module, precision: str) -> nn.Module:
    """Store an evaluation model's matmul weights in the autocast dtype of ``precision``.

    Autocast would cast each fp32 weight at each matmul, which for ViT-B/32 image encoding
    at batch 64 in bf16 took about 8% of the time (torch 2.14.1, 2-core AMD EPYC). Autocast
    uses a weight that already has its dtype as it is, so under the same region the results
    equal those of the fp32 model bit for bit. The model changes in place and stops
    requiring gradients for those weights. fp32 leaves it unchanged.

    Returns:
        ``model``, for chaining.
    """
    if precision == "fp32":
        return model
    dtype = AUTOCAST_DTYPES[precision]
    for module_name, module in model.named_modules():
        for name, weight in list(module.named_parameters(recurse=False)):
            if is_matmul_weight(f"{module_name}.{name}", weight):
                setattr(module, name, nn.Parameter(weight.to(dtype), requires_grad=False))
    return model


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


class Bf16WorkingCopy:
    """A copy of the model whose matmul weights are kept in bf16, trained through the model.

    Under bf16 autocast, every matmul casts its fp32 weight to bf16 at each use, and the
    backward pass casts each weight gradient back to a new fp32 tensor. On the CPU those
    allocations cost more than the casts themselves: in a ViT-B/32 step at batch 16, fresh
    pages for them took about 0.7 s of 5 s (torch 2.14.1, 2-core AMD EPYC). The working copy
    holds bf16 copies of the matmul weights (the 2-D parameters other than embeddings) and
    shares every other parameter with the model, and the forward pass runs on it under the
    same autocast region.

    As the backward pass produces the gradient of a bf16 weight, a hook copies it into an
    fp32 buffer that lives as long as this object and attaches that buffer to the model's
    weight as its gradient; later micro-batches add to it in fp32. The optimizer then
    updates the model's fp32 parameters, which checkpoints save, and
    :meth:`copy_to_working` refreshes the bf16 copies. The matmuls see the same bf16 values
    as under autocast, so the results equal those of autocast (checked bit for bit by
    tests/parity/test_parity_bf16_working_copy.py).

    With several replicas, :meth:`finish_gradients` averages the gradients across them in
    fp32, in place of DistributedDataParallel.
    """

    def __init__(self, model: nn.Module, world_size: int = 1) -> None:
        if world_size > 1:
            # Every replica starts from rank 0's weights, as DistributedDataParallel ensures.
            for parameter in model.parameters():
                dist.broadcast(parameter.data, src=0)
        self.model = model
        self.world_size = world_size
        # Copy the modules but not the parameters, which stay shared until replaced below.
        self.working = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
        self._weights: list[tuple[nn.Parameter, nn.Parameter, torch.Tensor]] = []
        for module_name, module in self.working.named_modules():
            for name, master in list(module.named_parameters(recurse=False)):
                if not is_matmul_weight(f"{module_name}.{name}", master):
                    continue
                working = nn.Parameter(master.detach().to(torch.bfloat16))
                setattr(module, name, working)
                index = len(self._weights)
                self._weights.append((working, master, torch.zeros_like(master)))
                working.register_post_accumulate_grad_hook(self._gradient_mover(index))
        # Indices into _weights of the gradients that the current step has written.
        self._written: set[int] = set()

    def _gradient_mover(self, index: int) -> Callable[[torch.Tensor], None]:
        def move(working: torch.Tensor) -> None:
            _, master, buffer = self._weights[index]
            if index in self._written:
                master.grad.add_(working.grad)
            else:
                master.grad = buffer.copy_(working.grad)
                self._written.add(index)
            working.grad = None

        return move

    def finish_gradients(self) -> None:
        """Average the step's gradients across replicas, before the optimizer step.

        With one replica, a parameter that received no gradient keeps none, so the
        optimizer skips it as under autocast. Replicas must all-reduce the same tensors,
        so there such a gradient is zero.
        """
        if self.world_size == 1:
            return
        parameters = list(self.model.parameters())
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        handles = [dist.all_reduce(p.grad, async_op=True) for p in parameters]
        for handle in handles:
            handle.wait()
        for parameter in parameters:
            parameter.grad.div_(self.world_size)

    @torch.no_grad()
    def copy_to_working(self) -> None:
        """Copy the updated weights into their bf16 copies; call after the optimizer step."""
        for working, master, _ in self._weights:
            working.copy_(master)
        self._written.clear()
