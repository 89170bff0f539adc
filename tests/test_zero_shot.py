"""Zero-shot classification and image-text retrieval on small sets with known results."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clip import retrieval, zero_shot
from clip.config import load_config
from clip.data.transforms import eval_transform
from clip.data.zero_shot import load_class_prompts
from clip.errors import ClipError
from clip.model import CLIP
from clip.retrieval import retrieval_recall
from clip.tokenizer import tokenize
from clip.training.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
from clip.training.precision import cast_matmul_weights
from clip.zero_shot import accuracy_metrics, build_classifier

PARSEABLE = re.compile(r"Zero-shot top1: (\S+) top5: (\S+)")
CONTEXT_LENGTH = 16


@pytest.fixture
def tiny_model() -> CLIP:
    torch.manual_seed(0)
    return CLIP(load_config("tiny", {"context_length": CONTEXT_LENGTH}).model).eval()


def save_training_checkpoint(model: CLIP, folder: Path) -> Path:
    config = load_config("tiny", {"context_length": CONTEXT_LENGTH})
    checkpoint = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": 1,
                  "model": model.state_dict(), "config": config.to_flat()}
    return save_checkpoint(checkpoint, folder)


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for index in range(count):
        path = folder / f"{index:02d}.png"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@torch.no_grad()
def reference_logits(model: CLIP, images: list[Path], classnames: list[str],
                     templates: list[str]) -> torch.Tensor:
    """Zero-shot logits computed one prompt and one image at a time."""
    class_embeddings = []
    for name in classnames:
        prompts = [
            F.normalize(model.encode_text(tokenize(t.format(name), CONTEXT_LENGTH)), dim=-1)[0]
            for t in templates
        ]
        class_embeddings.append(F.normalize(torch.stack(prompts).mean(dim=0), dim=0))
    transform = eval_transform(model.config.image_resolution)
    logits = []
    for path in images:
        pixels = transform(Image.open(path).convert("RGB"))[None]
        feature = F.normalize(model.encode_image(pixels), dim=-1)[0]
        logits.append(torch.stack([100 * feature @ c for c in class_embeddings]))
    return torch.stack(logits)


def test_accuracy_metrics_known_values() -> None:
    # Rows are images, columns the 6 classes; labels 0, 0, 1, 2, 3, 5.
    logits = torch.tensor([
        [9, 1, 2, 3, 4, 5],  # top-1 hit
        [1, 9, 2, 3, 4, 5],  # miss; label 0 is last, outside the top 5
        [1, 9, 2, 3, 4, 5],  # top-1 hit
        [9, 8, 7, 1, 2, 3],  # miss; label 2 ranks third
        [1, 2, 3, 9, 4, 5],  # top-1 hit
        [1, 2, 3, 9, 4, 8],  # miss; label 5 ranks second
    ], dtype=torch.float)
    labels = torch.tensor([0, 0, 1, 2, 3, 5])
    top1, top5, recall = accuracy_metrics(logits, labels)
    assert top1 == pytest.approx(50.0)
    assert top5 == pytest.approx(100 * 5 / 6)
    # Recall per present class: 0 -> 1/2, 1 -> 1, 2 -> 0, 3 -> 1, 5 -> 0.
    assert recall == pytest.approx(100 * 2.5 / 5)


def test_top5_not_applicable_under_five_classes() -> None:
    top1, top5, recall = accuracy_metrics(torch.eye(4), torch.arange(4))
    assert (top1, top5, recall) == (100.0, None, 100.0)
    result = zero_shot.ZeroShotResult(100.0, None, 100.0, 4, 4, 10.0)
    assert result.parseable_lines() == ["Zero-shot top1: 100.00 top5: n/a",
                                        "Zero-shot throughput: 10.00 images/sec"]
    assert "top-5 n/a (fewer than 5 classes)" in result.summary_line("digits")


def test_classifier_averages_normalised_templates(tiny_model: CLIP) -> None:
    classnames, templates = ["cat", "dog", "bird"], ["a {}.", "a photo of a {}."]
    classifier = build_classifier(tiny_model, classnames, templates, torch.device("cpu"))
    assert classifier.shape == (32, 3)
    with torch.no_grad():
        for column, name in enumerate(classnames):
            features = F.normalize(tiny_model.encode_text(
                tokenize([t.format(name) for t in templates], CONTEXT_LENGTH)), dim=-1)
            expected = F.normalize(features.mean(dim=0), dim=0)
            assert torch.allclose(classifier[:, column], expected, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cast_matmul_weights_equals_autocast(tiny_model: CLIP, precision: str) -> None:
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    token_ids = tokenize(["a photo of a cat", "a dog", ""], CONTEXT_LENGTH)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        expected = tiny_model.encode_image(images), tiny_model.encode_text(token_ids)
        cast_matmul_weights(tiny_model, precision)
        actual = tiny_model.encode_image(images), tiny_model.encode_text(token_ids)

    assert torch.equal(actual[0], expected[0])
    assert torch.equal(actual[1], expected[1])
    weights = dict(tiny_model.named_parameters())
    assert weights["visual.transformer.resblocks.0.attn.in_proj_weight"].dtype == dtype
    assert weights["visual.proj"].dtype == dtype
    assert weights["token_embedding.weight"].dtype == torch.float32
    assert weights["positional_embedding"].dtype == torch.float32
    assert weights["visual.conv1.weight"].dtype == torch.float32
    assert weights["ln_final.weight"].dtype == torch.float32


def test_cast_matmul_weights_fp32_unchanged(tiny_model: CLIP) -> None:
    before = {name: weight for name, weight in tiny_model.named_parameters()}
    cast_matmul_weights(tiny_model, "fp32")
    after = dict(tiny_model.named_parameters())
    assert all(after[name] is weight for name, weight in before.items())


def digits_set(tmp_path: Path, model: CLIP, wrong: int) -> tuple[Path, float, float]:
    """Write a digits map file whose first ``wrong`` labels disagree with the model.

    Returns the folder and the expected top-1 and top-5 accuracy in percent.
    """
    classnames, templates = load_class_prompts("digits")
    images = write_images(tmp_path / "digits" / "images", 8)
    logits = reference_logits(model, images, classnames, templates)
    predicted = logits.argmax(dim=1)
    labels = predicted.clone()
    labels[:wrong] = logits[:wrong].argmin(dim=1)
    lines = [f"images/{path.name}\t{label}" for path, label in zip(images, labels.tolist(),
                                                                     strict=True)]
    (tmp_path / "digits" / "val_official_clean.csv").write_text("\n".join(lines) + "\n")
    top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).float().mean()
    return tmp_path / "digits", 100 * (8 - wrong) / 8, 100 * top5.item()


def test_zero_shot_reports_forced_accuracy(tiny_model: CLIP, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder, top1, top5 = digits_set(tmp_path, tiny_model, wrong=2)
    save_training_checkpoint(tiny_model, tmp_path / "ckpt")

    # A folder means its latest checkpoint, as with a finished run's --checkpoint_dir.
    status = zero_shot.main([
        "--config", "tiny", "--zeroshot_dataset", "digits", "--zeroshot_path", str(folder),
        "--ckpt_file", str(tmp_path / "ckpt"), "--is_ipu_ckpt", "True", "--batch_size", "3",
    ])

    assert status == 0
    output = capsys.readouterr().out
    match = PARSEABLE.search(output)
    assert match, output
    assert float(match.group(1)) == pytest.approx(top1)
    assert top1 == 75.0
    assert float(match.group(2)) == pytest.approx(top5, abs=0.01)
    assert re.search(r"Zero-shot digits: 8 images, 10 classes, top-1 75\.00%", output)
    assert re.search(r"Zero-shot throughput: \d+\.\d\d images/sec", output)


def test_zero_shot_bf16_matches_fp32(tiny_model: CLIP, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder, top1, _ = digits_set(tmp_path, tiny_model, wrong=1)
    classnames, templates = load_class_prompts("digits")
    logits = reference_logits(tiny_model, sorted((folder / "images").glob("*.png")), classnames,
                              templates)
    # bf16 moves these logits by about 0.5, so a top-2 gap of 1.5 keeps every prediction.
    gaps = logits.topk(2, dim=1).values.diff(dim=1).abs()
    assert gaps.min() > 1.5, gaps
    save_training_checkpoint(tiny_model, tmp_path / "ckpt")

    status = zero_shot.main([
        "--config", "tiny", "--zeroshot_dataset", "digits", "--zeroshot_path", str(folder),
        "--ckpt_file", str(tmp_path / "ckpt"), "--is_ipu_ckpt", "True", "--precision", "bf16",
    ])

    assert status == 0
    match = PARSEABLE.search(capsys.readouterr().out)
    assert match
    assert float(match.group(1)) == pytest.approx(top1)


def test_zero_shot_official_state_dict(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    # clip.weights infers an official checkpoint's heads as width // 64, as OpenAI does.
    torch.manual_seed(0)
    widths = {"vision_width": 64, "vision_heads": 1, "transformer_width": 64,
              "transformer_heads": 1, "context_length": CONTEXT_LENGTH}
    model = CLIP(load_config("tiny", widths).model).eval()
    folder, top1, _ = digits_set(tmp_path, model, wrong=3)
    state_dict = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), state_dict)

    status = zero_shot.main([
        "--config", "tiny", "--zeroshot_dataset", "digits", "--zeroshot_path", str(folder),
        "--ckpt_file", str(state_dict), "--is_ipu_ckpt", "False",
    ])

    assert status == 0
    match = PARSEABLE.search(capsys.readouterr().out)
    assert match
    assert float(match.group(1)) == pytest.approx(top1)


@pytest.mark.parametrize(("ckpt_file", "message"), [
    ("", "ckpt_file is empty; pass --ckpt_file PATH"),
    ("missing.pt", "ckpt_file='missing.pt' does not exist"),
    ("{tmp_path}", "is a folder without checkpoint_step"),
])
def test_zero_shot_checkpoint_errors(ckpt_file: str, message: str, tmp_path: Path) -> None:
    config = load_config("tiny", {"ckpt_file": ckpt_file.format(tmp_path=tmp_path)})
    with pytest.raises(ClipError, match=message):
        zero_shot.load_eval_model(config, torch.device("cpu"))


def test_state_dict_rejected_as_training_checkpoint(tiny_model: CLIP, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    state_dict = tmp_path / "state_dict.pt"
    torch.save(tiny_model.state_dict(), state_dict)
    status = zero_shot.main(["--config", "tiny", "--ckpt_file", str(state_dict),
                             "--is_ipu_ckpt", "True"])
    assert status == 2
    assert "is a state_dict checkpoint, not a training checkpoint" in capsys.readouterr().err


def test_zero_shot_missing_map_file(tiny_model: CLIP, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = save_training_checkpoint(tiny_model, tmp_path / "ckpt")
    status = zero_shot.main(["--config", "tiny", "--zeroshot_dataset", "digits",
                             "--zeroshot_path", str(tmp_path / "nowhere"),
                             "--ckpt_file", str(checkpoint)])
    assert status == 2
    assert "map file" in capsys.readouterr().err


def test_retrieval_recall_counts_any_caption() -> None:
    # Three images; captions 0 and 1 belong to image 0, 2 and 3 to image 1, 4 to image 2.
    owners = torch.tensor([0, 0, 1, 1, 2])
    images = torch.eye(3)
    # Column i holds image i's similarity to each caption. Image 0 ranks its caption 1
    # first. Image 1 ranks caption 4 (of image 2) first and its own caption 3 second.
    # Image 2 ranks caption 0 first and its own caption last.
    texts = torch.tensor([
        [0.5, 0.0, 0.9],
        [0.9, 0.0, 0.0],
        [0.0, 0.2, 0.0],
        [0.0, 0.8, 0.0],
        [0.0, 0.9, -0.5],
    ])
    recalls = retrieval_recall(images, texts, owners, ks=(1, 2, 10))
    assert recalls["image_to_text_R@1"] == pytest.approx(100 / 3)
    assert recalls["image_to_text_R@2"] == pytest.approx(200 / 3)
    assert recalls["image_to_text_R@10"] == pytest.approx(100.0)
    # Caption k's best image: 0 -> 2 (miss), 1 -> 0, 2 -> 1, 3 -> 1, 4 -> 1 (miss).
    assert recalls["text_to_image_R@1"] == pytest.approx(60.0)
    # Second best: caption 0 -> image 0 (hit); caption 4 -> image 0 (miss).
    assert recalls["text_to_image_R@2"] == pytest.approx(80.0)
    assert recalls["text_to_image_R@10"] == pytest.approx(100.0)


def test_retrieval_program_on_caption_folder(tiny_model: CLIP, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_images(tmp_path / "images", 4)
    rows = [f"{path.name}\tpicture number {index}" for index, path in enumerate(paths)]
    rows.append(f"{paths[0].name}\tanother caption of the first picture")
    (tmp_path / "img_cap.csv").write_text("\n".join(rows) + "\n")
    checkpoint = save_training_checkpoint(tiny_model, tmp_path / "ckpt")

    status = retrieval.main([
        "--config", "tiny", "--ckpt_file", str(checkpoint), "--captions_path",
        str(tmp_path / "img_cap.csv"), "--image_path", str(tmp_path / "images"),
    ])

    assert status == 0
    output = capsys.readouterr().out
    assert "retrieval: 4 images, 5 captions" in output
    for direction in ("image_to_text", "text_to_image"):
        for k in (1, 5, 10):
            assert re.search(rf"{direction}_R@{k}: \d+\.\d\d", output), (direction, k)
    # With 4 images and 5 captions, recall@5 and @10 cover every candidate.
    assert "image_to_text_R@5: 100.00" in output
    assert "text_to_image_R@10: 100.00" in output
