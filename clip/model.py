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
    """The sigmoid approximation of GELU that OpenAI's CLIP weights were trained with.

    x * sigmoid(1.702 x) is computed as silu(1.702 x) / 1.702, which autograd
    differentiates with one fused kernel and one saved tensor instead of three kernels and
    two saved tensors. The results differ only by rounding.

    Args:
        inplace: overwrite the input when autograd is off, as in inference, which saves
            two allocations of the input's size. Only for inputs that nothing else reads.
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace and not torch.is_grad_enabled():
            return F.silu(x.mul_(1.702), inplace=True).div_(1.702)
        return F.silu(x * 1.702).div_(1.702)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Compute softmax attention of queries (B, H, M, D/H) over keys and values (B, H, N, D/H).

    Args:
        causal: query i attends only to keys j <= i; needs M == N.
        allowed: boolean mask broadcastable to (B, H, M, N), True where a query may attend
            a key. Not combined with ``causal``.

    Returns:
        (B, H, M, D/H) attention outputs.

    On the CPU this is :class:`CpuAttention`. For CLIP's short sequences (50 and 77 tokens),
    torch 2.14.1's CPU flash-attention kernel took about 4 times as long for forward plus
    backward in bf16, and about 10% longer in fp32 (batch 16, one thread, AMD EPYC with
    AVX512-BF16). Other devices use ``scaled_dot_product_attention`` and its fused kernels.
    """
    if q.device.type != "cpu":
        # NOTE: not run here (no GPU); the boolean mask of the pooled causal query follows
        # the documented attn_mask semantics, True = may attend.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=causal)
    if causal:
        allowed = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    return CpuAttention.apply(q, k, v, allowed)


def as_fp32(x: torch.Tensor) -> torch.Tensor:
    """Return x in fp32 and contiguous, so that matmuls read it without another copy."""
    return x.to(torch.float32, memory_format=torch.contiguous_format)


def attention_probabilities(q: torch.Tensor, k: torch.Tensor,
                            allowed: torch.Tensor | None) -> torch.Tensor:
    """Return the softmax (B, H, M, N) of the scaled scores of fp32 q and k, 0 where masked."""
    scores = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)  # B H M N
    if allowed is not None:
        scores.masked_fill_(~allowed, float("-inf"))
    return scores.softmax(dim=-1)


class CpuAttention(torch.autograd.Function):
    """Softmax attention as matmuls, with scores and softmax in fp32 for any input type.

    Like a flash-attention kernel, it saves only q, k and v for the backward pass and
    computes the probabilities again there. Only the product with v runs in the input
    type, whose rounding of the probabilities matches that of bf16 and fp16 attention
    kernels. Autocast is off inside, so that the fp32 products stay fp32.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        with torch.autocast(q.device.type, enabled=False):
            probabilities = attention_probabilities(as_fp32(q), as_fp32(k), allowed)
            ctx.save_for_backward(q, k, v, allowed)
            return probabilities.to(v.dtype) @ v  # B H M D/H

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        q, k, v, allowed = ctx.saved_tensors
        with torch.autocast(q.device.type, enabled=False):
            q32, k32 = as_fp32(q), as_fp32(k)
            probabilities = attention_probabilities(q32, k32, allowed)  # B H M N
            grad_v = probabilities.to(v.dtype).transpose(-2, -1) @ grad.to(v.dtype)
            grad_probabilities = as_fp32(grad) @ as_fp32(v).transpose(-2, -1)  # B H M N
            # The softmax's backward pass, then the scale of the scores.
            row_sums = (grad_probabilities * probabilities).sum(dim=-1, keepdim=True)
            grad_scores = grad_probabilities.sub_(row_sums).mul_(probabilities)
            grad_scores.mul_(q.shape[-1] ** -0.5)
            grad_q = (grad_scores @ k32).to(q.dtype)  # B H M D/H
            grad_k = (grad_scores.transpose(-2, -1) @ q32).to(k.dtype)  # B H N D/H
        return grad_q, grad_k, grad_v, None


class Attention(nn.Module):
    """Multi-head self-attention with the parameter layout of ``nn.MultiheadAttention``.

    The text tower is causal through the causal flag of :func:`attention`, not a mask
    tensor. The initialisation is that of ``nn.MultiheadAttention``.
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
        out = attention(q, k, v, causal=self.causal)
        out = out.transpose(1, 2).reshape(batch, tokens, width)  # B N D
        return self.out_proj(out)

    def pooled(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Return the attention output (B, 1, D) of one token per row of x (B, N, D).

        Keys and values come from every token. The query comes from token ``index[b]`` of
        row b, which in the causal tower attends only to tokens up to itself.
        """
        batch, tokens, width = x.shape
        rows = torch.arange(batch, device=x.device)
        query = x[rows, index].unsqueeze(1)  # B 1 D
        q_weight, kv_weight = self.in_proj_weight.split([width, 2 * width])
        q_bias, kv_bias = self.in_proj_bias.split([width, 2 * width])
        q = F.linear(query, q_weight, q_bias)  # B 1 D
        q = q.view(batch, 1, self.heads, width // self.heads).transpose(1, 2)  # B H 1 D/H
        kv = F.linear(x, kv_weight, kv_bias)  # B N 2D
        kv = kv.view(batch, tokens, 2, self.heads, width // self.heads)  # B N 2 H D/H
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each B H N D/H
        allowed = None
        if self.causal:
            positions = torch.arange(tokens, device=x.device)
            allowed = (positions <= index[:, None])[:, None, None, :]  # B 1 1 N
        out = attention(q, k, v, allowed=allowed)  # B H 1 D/H
        return self.out_proj(out.transpose(1, 2).reshape(batch, 1, width))  # B 1 D


class ResidualAttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block: attention, then an MLP of width 4D."""

    def __init__(self, width: int, heads: int, causal: bool, quick_gelu: bool = True) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            # The activation's input is c_fc's output, which nothing else reads.
            ("gelu", QuickGELU(inplace=True) if quick_gelu else nn.GELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class PoolingBlock(ResidualAttentionBlock):
    """The last block of a tower, computed only for the token that the tower pools.

    Both towers use nothing of the last block's output but one token per sample (the class
    token, the end-of-text token). Its keys and values still need every token, but its
    queries, output projection and MLP are computed for that token alone. That skips about
    five sixths of the block's matmul work, and the result is the same up to rounding.
    """

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """Return the block's output (B, D) at token ``index[b]`` of each row of x (B, N, D)."""
        rows = torch.arange(x.shape[0], device=x.device)
        pooled = x[rows, index].unsqueeze(1) + self.attn.pooled(self.ln_1(x), index)  # B 1 D
        pooled = pooled + self.mlp(self.ln_2(pooled))
        return pooled.squeeze(1)  # B D


class Transformer(nn.Module):
    """A stack of residual attention blocks over (B, N, D) inputs that returns one token per row.

    The last block is a :class:`PoolingBlock`, so the stack returns (B, D): the output at
    the pooled token of each row.
    """

    def __init__(self, width: int, layers: int, heads: int, causal: bool,
                 quick_gelu: bool = True) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(width, heads, causal, quick_gelu) for _ in range(layers - 1)],
            PoolingBlock(width, heads, causal, quick_gelu),
        )

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Return the output (B, D) at token ``index[b]`` of each row of x (B, N, D)."""
        for block in self.resblocks[:-1]:
            x = block(x)
        return self.resblocks[-1](x, index)

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
        class_token = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # B
        x = self.transformer(self.ln_pre(x), class_token)  # B D
        return self.ln_post(x) @ self.proj  # B E


def trim_padding(token_ids: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Drop the columns after the last end-of-text token of the batch, on the CPU in eager mode.

    In the causal text tower a token never attends to later ones, so the padding after the
    end-of-text token changes nothing in the pooled output, and dropping it is exact up to
    rounding. CLIP captions are much shorter than the 77-token context, so this skips most
    of the text tower's work. It reads the length on the host, which would stall a CUDA
    queue and would fix one length into a compiled or traced graph, so other devices and
    compiled code keep every column.

    Args:
        token_ids: (B, L) token ids.
        end: (B,) position of each row's end-of-text token.
    """
    if token_ids.device.type != "cpu" or torch.compiler.is_compiling() \
            or torch.jit.is_tracing():
        return token_ids
    return token_ids[:, :int(end.max()) + 1]  # B L'


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
        # The end-of-text token, which has the largest id, is the pooled token.
        end = token_ids.argmax(dim=-1)  # B
        token_ids = trim_padding(token_ids, end)
        length = token_ids.shape[1]
        x = self.token_embedding(token_ids).to(self.dtype)  # B L D
        x = x + self.positional_embedding[:length].to(self.dtype)
        # LayerNorm acts on each token alone, so normalising only the pooled token is exact.
        eot = self.transformer(x, end)  # B D
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
