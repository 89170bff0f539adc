"""The CLIP model: equivalence with open_clip, initialisation, input checks and dtypes.

open_clip models are built with ``pretrained=None``, so nothing is downloaded; their
random weights are copied into our model (and ours into theirs) with strict loading.
Token ids come from ``open_clip.tokenize`` so these tests do not depend on our tokenizer.
"""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
from torch import nn

from clip.config import ModelConfig, load_config
from clip.errors import ClipError
from clip.model import CLIP, INIT_LOGIT_SCALE, MAX_LOGIT_SCALE, QuickGELU

# Absolute tolerance for fp32 features and logits against open_clip.
TOLERANCE = 1e-5
CAPTIONS = ["a photo of a cat", "a diagram of a transformer block", "two dogs on a beach"]

# open_clip model name and our quick_gelu setting for each ViT-B/32 variant.
VIT_B_32_VARIANTS = {
    "quickgelu": ("ViT-B-32-quickgelu", True),
    "gelu": ("ViT-B-32", False),
}


def build_ours(preset: str, seed: int, **overrides: object) -> CLIP:
    torch.manual_seed(seed)
    config = load_config(preset, overrides).model
    return CLIP(config).eval()


def build_open_clip_vit_b_32(variant: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    name, _ = VIT_B_32_VARIANTS[variant]
    return open_clip.create_model(name, pretrained=None).eval()


def build_open_clip_tiny(config: ModelConfig) -> nn.Module:
    """Build the open_clip model with the architecture of our ``tiny`` preset."""
    vision_cfg = {
        "layers": config.vision_layers,
        "width": config.vision_width,
        "head_width": config.vision_width // config.vision_heads,
        "patch_size": config.vision_patch_size,
        "image_size": config.image_resolution,
    }
    text_cfg = {
        "context_length": config.context_length,
        "vocab_size": config.vocab_size,
        "width": config.transformer_width,
        "heads": config.transformer_heads,
        "layers": config.transformer_layers,
    }
    model = open_clip.model.CLIP(config.embed_dim, vision_cfg, text_cfg, quick_gelu=True)
    return model.eval()


def assert_same_outputs(ours: CLIP, reference: nn.Module) -> None:
    """Compare features and logits of both models in fp32 on the same inputs."""
    resolution = ours.config.image_resolution
    torch.manual_seed(2)
    images = torch.randn(len(CAPTIONS), 3, resolution, resolution)
    token_ids = open_clip.tokenize(CAPTIONS)

    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), reference.encode_image(images),
                                   atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(ours.encode_text(token_ids), reference.encode_text(token_ids),
                                   atol=TOLERANCE, rtol=0)
        image_features, text_features, scale = ours(images, token_ids)
        ref_image_features, ref_text_features, ref_scale = reference(images, token_ids)

    logits = scale * image_features @ text_features.T
    ref_logits = ref_scale * ref_image_features @ ref_text_features.T
    torch.testing.assert_close(logits, ref_logits, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(scale, ref_scale, atol=0, rtol=0)


@pytest.mark.parametrize("variant", sorted(VIT_B_32_VARIANTS))
def test_open_clip_weights_load_into_ours(variant: str) -> None:
    _, quick_gelu = VIT_B_32_VARIANTS[variant]
    reference = build_open_clip_vit_b_32(variant, seed=0)
    ours = build_ours("CLIP_ViT-B-32_cc3m", seed=1, quick_gelu=quick_gelu)

    ours.load_state_dict(reference.state_dict(), strict=True)

    assert_same_outputs(ours, reference)


@pytest.mark.parametrize("variant", sorted(VIT_B_32_VARIANTS))
def test_our_weights_load_into_open_clip(variant: str) -> None:
    _, quick_gelu = VIT_B_32_VARIANTS[variant]
    ours = build_ours("CLIP_ViT-B-32_cc3m", seed=0, quick_gelu=quick_gelu)
    reference = build_open_clip_vit_b_32(variant, seed=1)

    reference.load_state_dict(ours.state_dict(), strict=True)

    assert_same_outputs(ours, reference)


def test_tiny_preset_matches_open_clip_custom_config() -> None:
    ours = build_ours("tiny", seed=0)
    reference = build_open_clip_tiny(ours.config)

    reference.load_state_dict(ours.state_dict(), strict=True)

    assert_same_outputs(ours, reference)


def test_activation_follows_quick_gelu_option() -> None:
    quick = build_ours("tiny", seed=0)
    exact = build_ours("tiny", seed=0, quick_gelu=False)
    assert isinstance(quick.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(quick.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(exact.visual.transformer.resblocks[0].mlp.gelu, nn.GELU)
    assert isinstance(exact.transformer.resblocks[0].mlp.gelu, nn.GELU)


# ---- initialisation ----

def assert_std(tensor: torch.Tensor, expected: float, name: str) -> None:
    """Check a sample standard deviation, allowing four standard errors (at least 2%)."""
    tolerance = max(0.02, 4 / math.sqrt(2 * tensor.numel()))
    std = tensor.float().std().item()
    relative_error = abs(std - expected) / expected
    assert relative_error < tolerance, f"{name}: std {std:.5f}, expected {expected:.5f}"
    mean = tensor.float().mean().item()
    assert abs(mean) < 4 * expected / math.sqrt(tensor.numel()), f"{name}: mean {mean:.5f}"


def test_text_tower_initialisation_statistics() -> None:
    model = build_ours("unit_test", seed=0)
    width = model.config.transformer_width
    layers = model.config.transformer_layers
    proj_std = width ** -0.5 * (2 * layers) ** -0.5

    assert_std(model.token_embedding.weight, 0.02, "token_embedding")
    assert_std(model.positional_embedding, 0.01, "positional_embedding")
    assert_std(model.text_projection, width ** -0.5, "text_projection")
    for index, block in enumerate(model.transformer.resblocks):
        assert_std(block.attn.in_proj_weight, width ** -0.5, f"block {index} in_proj_weight")
        assert_std(block.attn.out_proj.weight, proj_std, f"block {index} out_proj.weight")
        assert_std(block.mlp.c_fc.weight, (2 * width) ** -0.5, f"block {index} c_fc.weight")
        assert_std(block.mlp.c_proj.weight, proj_std, f"block {index} c_proj.weight")
        assert torch.count_nonzero(block.attn.in_proj_bias) == 0
        assert torch.count_nonzero(block.attn.out_proj.bias) == 0


def test_vision_tower_initialisation_statistics() -> None:
    # OpenAI's code leaves the vision transformer at PyTorch's defaults: Xavier-uniform for
    # the attention input and Kaiming-uniform nn.Linear weights, std 1 / sqrt(3 fan_in).
    model = build_ours("unit_test", seed=0)
    width = model.config.vision_width

    assert_std(model.visual.class_embedding, width ** -0.5, "class_embedding")
    assert_std(model.visual.positional_embedding, width ** -0.5, "visual.positional_embedding")
    assert_std(model.visual.proj, width ** -0.5, "visual.proj")
    patch_fan_in = 3 * model.config.vision_patch_size ** 2
    assert_std(model.visual.conv1.weight, (3 * patch_fan_in) ** -0.5, "conv1")
    for index, block in enumerate(model.visual.transformer.resblocks):
        xavier_std = (2 / (width + 3 * width)) ** 0.5
        assert_std(block.attn.in_proj_weight, xavier_std, f"block {index} in_proj_weight")
        assert_std(block.attn.out_proj.weight, (3 * width) ** -0.5, f"block {index} out_proj")
        assert_std(block.mlp.c_fc.weight, (3 * width) ** -0.5, f"block {index} c_fc")
        assert_std(block.mlp.c_proj.weight, (3 * 4 * width) ** -0.5, f"block {index} c_proj")
        assert torch.count_nonzero(block.attn.in_proj_bias) == 0
        assert torch.count_nonzero(block.attn.out_proj.bias) == 0


def test_layer_norms_start_as_identity() -> None:
    model = build_ours("tiny", seed=0)
    norms = [module for module in model.modules() if isinstance(module, nn.LayerNorm)]
    assert len(norms) == 3 + 2 * (model.config.vision_layers + model.config.transformer_layers)
    for norm in norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


def test_logit_scale_starts_at_log_inverse_temperature() -> None:
    model = build_ours("tiny", seed=0)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert INIT_LOGIT_SCALE == pytest.approx(2.6593, abs=1e-4)


def test_clamp_logit_scale_bounds() -> None:
    model = build_ours("tiny", seed=0)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
    assert math.exp(model.logit_scale.item()) == pytest.approx(100.0)

    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == 0.0

    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == 3.0


# ---- forward pass ----

def test_forward_returns_unit_features_and_scale() -> None:
    model = build_ours("tiny", seed=0)
    images = torch.randn(4, 3, 32, 32)
    token_ids = open_clip.tokenize(CAPTIONS + ["a fourth caption"])

    image_features, text_features, scale = model(images, token_ids)

    assert image_features.shape == (4, model.config.embed_dim)
    assert text_features.shape == (4, model.config.embed_dim)
    torch.testing.assert_close(image_features.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(text_features.norm(dim=-1), torch.ones(4))
    assert scale.item() == pytest.approx(1 / 0.07)


def test_text_features_ignore_tokens_after_end_of_text() -> None:
    model = build_ours("tiny", seed=0)
    token_ids = open_clip.tokenize(["a photo of a cat"])
    end = int(token_ids.argmax(dim=-1))
    changed_after = token_ids.clone()
    changed_after[0, end + 1:end + 4] = 42
    changed_before = token_ids.clone()
    changed_before[0, end - 1] = 42

    with torch.no_grad():
        features = model.encode_text(token_ids)
        torch.testing.assert_close(model.encode_text(changed_after), features)
        torch.testing.assert_close(model.encode_text(token_ids[:, :end + 1]), features)
        assert not torch.allclose(model.encode_text(changed_before), features)


def test_gradients_reach_every_parameter() -> None:
    model = build_ours("tiny", seed=0).train()
    images = torch.randn(2, 3, 32, 32)
    token_ids = open_clip.tokenize(CAPTIONS[:2])

    image_features, text_features, scale = model(images, token_ids)
    logits = scale * image_features @ text_features.T
    loss = nn.functional.cross_entropy(logits, torch.arange(2))
    loss.backward()

    no_gradient = [name for name, p in model.named_parameters() if p.grad is None]
    assert no_gradient == []
    assert model.logit_scale.grad.abs().item() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_agrees_with_fp32(dtype: torch.dtype) -> None:
    model = build_ours("tiny", seed=0)
    images = torch.randn(3, 3, 32, 32)
    token_ids = open_clip.tokenize(CAPTIONS)
    with torch.no_grad():
        expected_image = model.encode_image(images)
        expected_text = model.encode_text(token_ids)
        model.to(dtype)
        image_features = model.encode_image(images)
        text_features = model.encode_text(token_ids)

    assert image_features.dtype == dtype
    assert text_features.dtype == dtype
    cosine = nn.functional.cosine_similarity
    assert cosine(image_features.float(), expected_image).min() > 0.99
    assert cosine(text_features.float(), expected_text).min() > 0.99


def test_bf16_autocast_agrees_with_fp32() -> None:
    model = build_ours("tiny", seed=0)
    images = torch.randn(3, 3, 32, 32)
    token_ids = open_clip.tokenize(CAPTIONS)
    with torch.no_grad():
        expected_image = model.encode_image(images)
        expected_text = model.encode_text(token_ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            image_features = model.encode_image(images)
            text_features = model.encode_text(token_ids)

    assert image_features.dtype == torch.bfloat16
    cosine = nn.functional.cosine_similarity
    assert cosine(image_features.float(), expected_image).min() > 0.99
    assert cosine(text_features.float(), expected_text).min() > 0.99


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_agrees_with_fp32(dtype: torch.dtype) -> None:
    model = build_ours("tiny", seed=0).cuda()
    images = torch.randn(3, 3, 32, 32, device="cuda")
    token_ids = open_clip.tokenize(CAPTIONS).cuda()
    with torch.no_grad():
        expected_image = model.encode_image(images)
        expected_text = model.encode_text(token_ids)
        with torch.autocast("cuda", dtype=dtype):
            image_features = model.encode_image(images)
            text_features = model.encode_text(token_ids)

    assert image_features.dtype == dtype
    cosine = nn.functional.cosine_similarity
    assert cosine(image_features.float(), expected_image).min() > 0.99
    assert cosine(text_features.float(), expected_text).min() > 0.99


# ---- input checks ----

@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 3, 32, 16), (2, 1, 32, 32), (3, 32, 32)])
def test_encode_image_rejects_wrong_shape(shape: tuple[int, ...]) -> None:
    model = build_ours("tiny", seed=0)
    with pytest.raises(ClipError, match=r"expected \(batch, 3, 32, 32\)"):
        model.encode_image(torch.zeros(shape))


def test_encode_text_rejects_ids_longer_than_context() -> None:
    model = build_ours("tiny", seed=0)
    token_ids = torch.zeros(2, 78, dtype=torch.long)
    with pytest.raises(ClipError, match=r"shape \(2, 78\); expected \(batch, length\) with "
                       r"length <= context_length=77"):
        model.encode_text(token_ids)


def test_encode_text_rejects_one_dimensional_ids() -> None:
    model = build_ours("tiny", seed=0)
    with pytest.raises(ValueError, match=r"shape \(77,\); expected \(batch, length\)"):
        model.encode_text(torch.zeros(77, dtype=torch.long))


def test_invalid_config_raises_at_construction() -> None:
    config = load_config("tiny").model
    config.vision_heads = 3
    with pytest.raises(ClipError, match="vision_width=32 is not divisible by vision_heads=3"):
        CLIP(config)
