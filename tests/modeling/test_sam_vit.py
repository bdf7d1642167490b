"""SAM/MedSAM ViT backbones in AutoPromptSAM (issue #18): K classes and batches at their own 1024 window.

Nothing is downloaded: the ViT-B comes from segment-anything's registry with random weights. Its image
encoder is not run (a ViT-B forward at 1024 x 1024 takes about half a minute on a loaded 2-core CPU); the
tests that need the encoder use a reduced ViT of the same class (``ImageEncoderViT``, 2 narrow blocks) with
segment-anything's full-size prompt encoder and mask decoder.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from autoprompt.modeling.backbone import SamBackbone, backbone_window_size, segment_anything_backbone
from autoprompt.modeling.build import build_autoprompt_sam
from autoprompt.modeling.class_decoder import decode_classes
from autoprompt.modeling.config import ModelConfig
from pipeline.trainer_config import LossConfig
from pipeline.training.embedding_cache import EMBEDDING_SHAPE
from pipeline.training.losses import AutoPromptLoss

K, B, WINDOW = 3, 2, 1024


def _seeded(build):
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


@pytest.fixture(scope="module")
def vit_b() -> SamBackbone:
    """segment-anything's ViT-B SAM, randomly initialised, as the ``sam_vit_b`` backbone."""
    sam = _seeded(lambda: sam_model_registry["vit_b"](checkpoint=None))
    return segment_anything_backbone(
        sam, name="sam_vit_b", checksum="random", imagenet_normalisation=True
    ).eval()


@pytest.fixture(scope="module")
def small_vit() -> SamBackbone:
    """A 2-block, 32-wide ``ImageEncoderViT`` at 1024 with SAM's full prompt encoder and mask decoder."""

    def build() -> Sam:
        encoder = ImageEncoderViT(
            img_size=WINDOW,
            patch_size=16,
            embed_dim=32,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=256,
            qkv_bias=True,
            norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=14,
            global_attn_indexes=(1,),
        )
        prompt_encoder = PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(WINDOW, WINDOW), mask_in_chans=16
        )
        decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        return Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=decoder)

    sam = _seeded(build)
    return segment_anything_backbone(
        sam, name="medsam_vit_b", checksum="random", imagenet_normalisation=False
    ).eval()


def _config(backbone: SamBackbone, **changes: object) -> ModelConfig:
    """PyTorch's encoder: an OpenVINO export of each random test ViT would cost more than these tests."""
    return ModelConfig(
        backbone=backbone.name, head_channels=16, adapter_dim=8, encoder_runtime="eager", **changes
    )


def test_the_vit_b_backbone_takes_its_own_1024_window_and_gives_256_x_64_x_64(vit_b) -> None:
    assert vit_b.model_input_size == backbone_window_size("sam_vit_b") == WINDOW
    assert backbone_window_size("medsam_vit_b") == WINDOW and backbone_window_size("litemedsam") == 256
    assert (vit_b.embed_dim, *vit_b.embedding_size) == EMBEDDING_SHAPE == (256, 64, 64)
    model = build_autoprompt_sam(_config(vit_b), num_classes=K, in_channels=1, backbone=vit_b)
    assert model.window_size == WINDOW
    with pytest.raises(ValueError, match="1024 x 1024"):
        model(torch.rand(B, 1, 256, 256))  # no 256 windows enlarged inside any more


@pytest.mark.parametrize("kind", ["segment_anything", "litemedsam"])
def test_decoding_a_batch_of_classes_equals_one_image_with_its_prompts_at_a_time(
    kind: str, vit_b: SamBackbone, tiny_backbone: SamBackbone
) -> None:
    # the reference is each decoder's documented use: one image embedding and its K prompts per call
    backbone = vit_b if kind == "segment_anything" else tiny_backbone
    prompt_encoder, mask_decoder = backbone.prompt_encoder, backbone.mask_decoder
    size = backbone.model_input_size
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(B, 256, 64, 64, generator=generator)
    boxes = torch.tensor([0.1, 0.2, 0.6, 0.7]) + torch.rand(B, K, 1, generator=generator) * 0.2
    coarse = torch.randn(B, K, 64, 64, generator=generator)
    tokens = torch.randn(B, K, 256, generator=generator)
    with torch.no_grad():
        batched = decode_classes(
            prompt_encoder,
            mask_decoder,
            embeddings,
            boxes=boxes,
            coarse_logits=coarse,
            class_tokens=tokens,
            output_size=size,
        )
        reference = []
        for i in range(B):
            mask_size = tuple(prompt_encoder.mask_input_size)
            masks = F.interpolate(coarse[i][:, None], size=mask_size, mode="bilinear", align_corners=False)
            sparse, dense = prompt_encoder(points=None, boxes=boxes[i] * size, masks=masks)
            logits, _ = mask_decoder(
                image_embeddings=embeddings[i : i + 1],
                image_pe=prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=torch.cat([sparse, tokens[i][:, None]], dim=1),
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            reference.append(F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False))
    assert batched.shape == (B, K, size, size)
    assert torch.allclose(batched, torch.stack([r[:, 0] for r in reference]), atol=1e-4)
    assert not torch.allclose(batched[0], batched[1], atol=1e-2)  # the images are not mixed up


def test_forward_shapes_at_1024_for_slices_and_stacks(small_vit) -> None:
    images = torch.rand(B, 1, WINDOW, WINDOW, generator=torch.Generator().manual_seed(2))
    flat = build_autoprompt_sam(_config(small_vit), num_classes=K, in_channels=1, backbone=small_vit)
    stacked = build_autoprompt_sam(
        _config(small_vit), num_classes=K, in_channels=1, stack_depth=3, backbone=small_vit
    )
    with torch.no_grad():
        embeddings = flat.encode(images)
        outputs = {
            (B,): flat(images),
            (1, 3): stacked(torch.cat([images, images[:1]])[None]),
        }
    assert embeddings.shape == (B, 256, 64, 64)
    for lead, out in outputs.items():
        assert out.logits.shape == (*lead, K + 1, WINDOW, WINDOW)
        assert out.class_mask_logits.shape == (*lead, K, WINDOW, WINDOW)
        assert out.coarse_logits.shape == (*lead, K, WINDOW, WINDOW)
        assert out.boxes.shape == (*lead, K, 4)
        assert out.presence_logits.shape == (*lead, K)
        assert bool(torch.isfinite(out.logits).all())


def test_one_training_step_with_the_vit_b_decoder_changes_only_trainable_weights(vit_b) -> None:
    model = build_autoprompt_sam(
        _config(vit_b, train_decoder=True), num_classes=K, in_channels=1, backbone=vit_b
    )
    model.train()
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(B, 256, 64, 64, generator=generator)  # the frozen encoder's output, as cached
    target = torch.zeros(B, WINDOW, WINDOW, dtype=torch.long)
    target[:, 100:400, 200:600] = 1
    target[0, 600:900, 100:300] = 2
    target[1, 500:700, 700:1000] = 3
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    terms = AutoPromptLoss(K, LossConfig())(model(embeddings=embeddings), target)
    terms["total"].backward()
    optimiser.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert bool(torch.isfinite(terms["total"]))
    assert changed <= trainable
    assert any(n.startswith("backbone.mask_decoder.") for n in changed)
    assert any(n.startswith("prompt_generator.") for n in changed)
    assert not any(n.startswith("backbone.image_encoder.") for n in trainable)
