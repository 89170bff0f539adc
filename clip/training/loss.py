"""The symmetric contrastive (InfoNCE) loss of CLIP and the gathering of features across replicas.

Shape legend: B samples in the local batch, G samples in the global batch, E embed_dim.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Return the mean of the image-to-text and text-to-image cross-entropies.

    Args:
        image_features: (G, E) L2-normalised image features.
        text_features: (G, E) L2-normalised text features; row i is the caption of image i.
        logit_scale: exp(logit_scale), a scalar tensor.

    Returns:
        The scalar loss, computed in fp32 whatever the input precision.
    """
    logits = logit_scale.float() * image_features.float() @ text_features.float().t()  # G G
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def share_gradient(value: torch.Tensor, passes: int) -> torch.Tensor:
    """Return ``value`` unchanged but with its gradient divided by ``passes``.

    The feature-cache step evaluates the same loss once per micro-batch. Parameters that
    enter the loss directly (logit_scale) would otherwise receive their gradient once per
    pass instead of once per step.
    """
    detached = value.detach()
    return detached + (value - detached) / passes


class FeatureGather:
    """Gathers features from every replica so that the loss covers the global batch.

    Other replicas' rows arrive without gradient and this replica's rows are substituted
    with the local tensor that has one. Each replica therefore back-propagates only
    through its own rows. Data parallelism averages the replicas' gradients, so the
    backward pass must scale the loss by ``gradient_factor`` (the world size) for the sum
    over replicas to equal the gradient of the global-batch loss.

    With one replica, or with ``enabled`` False, every method returns its input.
    """

    def __init__(self, enabled: bool, rank: int, world_size: int) -> None:
        self.active = enabled and world_size > 1
        self.rank = rank
        self.world_size = world_size
        self.gradient_factor = world_size if self.active else 1

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Return the (world_size * B, E) concatenation of every replica's (B, E) rows.

        The result carries no gradient; :meth:`substitute` puts the local rows back.
        """
        if not self.active:
            return local
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.detach().contiguous())
        return torch.cat(parts)  # G E

    def substitute(self, gathered: torch.Tensor, local: torch.Tensor,
                   offset: int = 0) -> torch.Tensor:
        """Replace this replica's rows ``offset : offset + B`` of its block by ``local``.

        Args:
            gathered: (G, E) rows from :meth:`gather`, one block of G / world_size rows
                per replica.
            local: (B, E) rows with gradient.
            offset: first row of ``local`` inside this replica's block.
        """
        replica = self.rank if self.active else 0
        block = gathered.shape[0] // (self.world_size if self.active else 1)
        start = replica * block + offset
        end = start + local.shape[0]
        if start == 0 and end == gathered.shape[0]:
            return local
        return torch.cat([gathered[:start], local.to(gathered.dtype), gathered[end:]])  # G E

    def gather_with_local(self, local: torch.Tensor) -> torch.Tensor:
        """Gather (B, E) rows from every replica and keep the gradient of the local ones."""
        if not self.active:
            return local
        return self.substitute(self.gather(local), local)
