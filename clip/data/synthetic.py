"""Generated training data: random images and caption-shaped token ids, for throughput runs.

Images are standard normal noise, about the range of CLIP-normalized real images. Each
caption is the start token 49406, 1 to context_length - 2 random ids below 49406, the end token
49407 and zero padding, like the tokenizer's output. Everything is deterministic in the seed.

Two sources are offered:

- host generation (``--host_generate_data``): one host batch is generated once on the host
  (pinned on CUDA) and returned on every call, so the data never limits throughput and the
  host-to-device copy is still measured;
- device generation (``--ipu_generate_data``): the batch is generated once with torch on the
  target device and returned on every call, so no host transfer happens at all.
"""

from __future__ import annotations

import torch

from clip.errors import ClipError

SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
# Host calls in one epoch when generated_samples is 0.
DEFAULT_HOST_CALLS_PER_EPOCH = 10


def generate_batch(num_samples: int, resolution: int, context_length: int, seed: int,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Generate images (N, 3, R, R) float32 and token ids (N, context_length) on ``device``.

    The same seed gives the same tensors on the same device type; CPU and CUDA generators
    differ, so the values differ between the two.
    """
    if context_length < 3:
        raise ClipError(
            f"context_length={context_length} cannot hold a start token, one token and an end "
            "token; set --context_length 3 or more."
        )
    generator = torch.Generator(device=device).manual_seed(seed)
    images = torch.randn(
        (num_samples, 3, resolution, resolution), generator=generator, device=device
    )
    tokens = _caption_ids(num_samples, context_length, generator, device)
    return images, tokens


def _caption_ids(num_samples: int, context_length: int, generator: torch.Generator,
                 device: str | torch.device) -> torch.Tensor:
    # Caption body lengths (N,), between 1 and context_length - 2 tokens.
    lengths = torch.randint(
        1, context_length - 1, (num_samples,), generator=generator, device=device
    )
    body = torch.randint(
        1, SOT_TOKEN_ID, (num_samples, context_length), generator=generator, device=device
    )
    positions = torch.arange(context_length, device=device)  # (L,)
    # Body tokens fill positions 1..length; (N, L) by broadcasting (1, L) against (N, 1).
    in_body = (positions[None, :] >= 1) & (positions[None, :] <= lengths[:, None])
    tokens = torch.where(in_body, body, torch.zeros_like(body))
    tokens[:, 0] = SOT_TOKEN_ID
    tokens[torch.arange(num_samples, device=device), lengths + 1] = EOT_TOKEN_ID
    return tokens


def epoch_batches(generated_samples: int, host_batch_size: int, world_size: int) -> int:
    """Return host batches per replica and epoch for ``generated_samples`` samples in all."""
    if generated_samples == 0:
        return DEFAULT_HOST_CALLS_PER_EPOCH
    batches = generated_samples // world_size // host_batch_size
    if batches == 0:
        raise ClipError(
            f"generated_samples={generated_samples} is less than one host batch of "
            f"{host_batch_size} samples on each of {world_size} replicas; set "
            f"--generated_samples {host_batch_size * world_size} or more, or 0 for "
            f"{DEFAULT_HOST_CALLS_PER_EPOCH} host batches."
        )
    return batches
