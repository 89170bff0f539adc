"""The CLIP model: a ViT image tower and a causal text transformer.

Parameter names and shapes are those of OpenAI's published ViT state dicts
(``visual.conv1.weight``, ``visual.transformer.resblocks.0.attn.in_proj_weight``,
``token_embedding.weight``, ``text_projection``, ``logit_scale``, ...), so OpenAI and
open_clip ViT checkpoints load with strict checking and no rename table.

Shape legend: B batch, N tokens, D width, H heads, E embed_dim, R image resolution,
P patch size.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from clip.config import ModelConfig
from clip.errors import ClipError

# logit_scale starts at ln(1 / 0.07) and is clamped to ln(100) after each optimizer step.
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100)


class LayerNorm(nn.LayerNorm):
    """LayerNorm whose output keeps the input dtype.

    The native kernels already accumulate fp16 and bf16 inputs in fp32, so the input is
    not copied to fp32 first. Under CUDA autocast, which runs layer_norm in fp32, the
    result is cast back so the residual stream keeps one dtype.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).to(x.dtype)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with the parameter layout of ``nn.MultiheadAttention``.

    It calls ``scaled_dot_product_attention`` directly, with the causal flag for the text
    tower instead of a mask tensor. The initialisation is that of ``nn.MultiheadAttention``.
    """

    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # B N 3D
        qkv = qkv.view(batch, tokens, 3, self.heads, width // self.heads)  # B N 3 H D/H
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each B H N D/H
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        out = out.transpose(1, 2).reshape(batch, tokens, width)  # B N D
        return self.out_proj(out)


class ResidualAttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block: attention, then an MLP of width 4D."""

    def __init__(self, width: int, heads: int, causal: bool, quick_gelu: bool = True) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", QuickGELU() if quick_gelu else nn.GELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks over (B, N, D) inputs."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool,
                 quick_gelu: bool = True) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[
            ResidualAttentionBlock(width, heads, causal, quick_gelu) for _ in range(layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)

    def init_weights(self) -> None:
        """Draw the block weights with the per-layer standard deviations of OpenAI's CLIP.

        Attention inputs get std D^-0.5, the MLP input (2D)^-0.5, and both output
        projections D^-0.5 * (2 * layers)^-0.5, which keeps the residual stream's variance
        independent of depth. Biases keep their defaults.
        """
        proj_std = (self.width ** -0.5) * ((2 * self.layers) ** -0.5)
        attn_std = self.width ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


class VisionTransformer(nn.Module):
    """ViT image tower: patch embedding, class token, transformer, projection."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width = config.vision_width
        scale = width ** -0.5
        self.input_resolution = config.image_resolution
        self.conv1 = nn.Conv2d(3, width, kernel_size=config.vision_patch_size,
                               stride=config.vision_patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn(config.num_patches + 1, width)
        )
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, config.vision_layers, config.vision_heads,
                                       causal=False, quick_gelu=config.quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, config.embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images)  # B D R/P R/P
        x = x.flatten(2).transpose(1, 2)  # B N D
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # B 1 D
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # B N+1 D
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj  # B E


class CLIP(nn.Module):
    """CLIP with OpenAI's parameter names.

    Args:
        config: the architecture; see :class:`clip.config.ModelConfig`. It is validated
            here, so a bad combination raises ClipError naming the option.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.context_length = config.context_length
        self.visual = VisionTransformer(config)
        self.transformer = Transformer(config.transformer_width, config.transformer_layers,
                                       config.transformer_heads, causal=True,
                                       quick_gelu=config.quick_gelu)
        self.token_embedding = nn.Embedding(config.vocab_size, config.transformer_width)
        self.positional_embedding = nn.Parameter(
            torch.empty(config.context_length, config.transformer_width)
        )
        self.ln_final = LayerNorm(config.transformer_width)
        self.text_projection = nn.Parameter(
            torch.empty(config.transformer_width, config.embed_dim)
        )
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise the text tower as OpenAI's CLIP code does.

        As in OpenAI's code, the vision transformer keeps PyTorch's default initialisation of
        ``nn.MultiheadAttention`` and ``nn.Linear``. Its embeddings and projection are drawn
        with std vision_width^-0.5 when they are created.
        """
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.config.transformer_width ** -0.5)
        self.transformer.init_weights()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights; inputs are cast to it."""
        return self.visual.conv1.weight.dtype

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Embed images.

        Args:
            images: (B, 3, R, R) normalised pixels, R = ``image_resolution``.

        Returns:
            (B, E) unnormalised image features.

        Raises:
            ClipError: the images do not have shape (B, 3, R, R).
        """
        resolution = self.config.image_resolution
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, resolution, resolution):
            raise ClipError(
                f"images have shape {tuple(images.shape)}; expected (batch, 3, {resolution}, "
                f"{resolution}). Resize RGB images to image_resolution={resolution} with "
                "clip.data.transforms.eval_transform or train_transform."
            )
        return self.visual(images.to(self.dtype))

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Embed tokenised captions.

        Args:
            token_ids: (B, L) token ids, L <= ``context_length``. The end-of-text token
                must have the largest id in each row, as in CLIP's tokenizer.

        Returns:
            (B, E) unnormalised text features, taken at the end-of-text position.

        Raises:
            ClipError: the ids are not two-dimensional or longer than context_length.
        """
        if token_ids.ndim != 2 or token_ids.shape[1] > self.context_length:
            raise ClipError(
                f"token_ids have shape {tuple(token_ids.shape)}; expected (batch, length) with "
                f"length <= context_length={self.context_length}. Tokenize with "
                f"context_length={self.context_length}."
            )
        length = token_ids.shape[1]
        x = self.token_embedding(token_ids).to(self.dtype)  # B L D
        x = x + self.positional_embedding[:length].to(self.dtype)
        x = self.transformer(x)

        # LayerNorm acts on each token alone, so normalising only the pooled token is exact.
        rows = torch.arange(x.shape[0], device=x.device)
        eot = x[rows, token_ids.argmax(dim=-1)]  # B D
        return self.ln_final(eot) @ self.text_projection  # B E

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return L2-normalised image features (B, E), text features (B, E) and exp(logit_scale)."""
        image_features = F.normalize(self.encode_image(images), dim=-1)
        text_features = F.normalize(self.encode_text(token_ids), dim=-1)
        return image_features, text_features, self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamp logit_scale to [0, ln(100)]; the training loop calls this after each step."""
        self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
