"""AutoPromptSAM on the tiny backbone. Encoding is the slow part on a CPU: tests that are not about the
encoder give the model the precomputed ``tiny_slices`` embeddings."""

from __future__ import annotations

import pytest
import torch

from autoprompt.devices import Precision, autocast
from autoprompt.errors import AutoPromptError
from autoprompt.modeling.adapters import AdaptedEncoderBlock
from autoprompt.modeling.autoprompt_sam import to_three_channels
from autoprompt.modeling.build import build_autoprompt_sam
from autoprompt.modeling.class_decoder import ABSENT_LOGIT, DecoderRegion, decode_classes
from autoprompt.modeling.prompt_generators import boxes_from_masks, exclusive_masks, label_masks
from tests.modeling.conftest import tiny_config


def _build(backbone, *, classes: int = 2, depth: int = 1, channels: int = 1, **changes):
    return build_autoprompt_sam(
        tiny_config(**changes),
        num_classes=classes,
        in_channels=channels,
        stack_depth=depth,
        backbone=backbone,
    )


def _trained_like(backbone, **build_options):
    """A model in eval mode with random trainable weights, as after training."""
    model = _build(backbone, **build_options).eval()
    _randomise_trainable(model)
    return model


def _with_weights_of(source, backbone, **build_options):
    """A model built with ``build_options`` (in eval mode) that carries ``source``'s trainable weights."""
    model = _build(backbone, **build_options).eval()
    model.load_trainable_state_dict(source.trainable_state_dict())
    return model


def _stack(tensor: torch.Tensor, depth: int) -> torch.Tensor:
    """The first ``depth`` slices as one stack: ``1 x D x ...``; depth 1 -> the 2d batch ``1 x ...``."""
    return tensor[:1] if depth == 1 else tensor[:depth].unsqueeze(0)


def _randomise_trainable(model, *, seed: int = 1) -> None:
    """Give every trainable tensor random values, as after training (zero-initialised ones included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


@pytest.mark.parametrize(
    ("generator", "depth", "classes"),
    [
        ("encoder_head", 1, 1),
        ("encoder_head", 1, 2),
        ("encoder_head", 2, 3),
        ("coarse_unet", 1, 3),
        ("coarse_unet", 2, 1),
        ("coarse_unet", 3, 2),
    ],
)
def test_output_shapes(tiny_backbone, tiny_slices, generator, depth, classes):
    images, embeddings = tiny_slices
    model = _build(tiny_backbone, classes=classes, depth=depth, prompt_generator=generator)
    with torch.no_grad():
        out = model(_stack(images, depth), embeddings=_stack(embeddings, depth))
    lead = (1,) if depth == 1 else (1, depth)
    assert out.logits.shape == (*lead, classes + 1, 256, 256)
    assert out.class_mask_logits.shape == (*lead, classes, 256, 256)
    assert out.coarse_logits.shape == (*lead, classes, 256, 256)
    assert out.boxes.shape == (*lead, classes, 4)
    assert out.presence_logits.shape == (*lead, classes)
    assert torch.equal(out.logits[..., 0, :, :], torch.zeros_like(out.logits[..., 0, :, :]))


def test_gradients_only_on_trainable_parameters_and_backbone_unchanged_by_a_step(tiny_backbone, tiny_slices):
    model = _build(
        tiny_backbone,
        depth=2,
        encoder_adapters=True,
        depth_adapter="encoder",
        train_decoder=True,
        train_prompt_encoder=True,
    )
    _randomise_trainable(model)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(_stack(tiny_slices[0], 2))
    loss = (
        out.logits.logsumexp(dim=-3).mean()
        + out.coarse_logits.mean()
        + out.boxes.sum()
        + out.presence_logits.sum()
    )
    loss.backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    optimiser.step()
    for name, parameter in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(parameter, frozen_before[name]), name
    assert any(
        not torch.equal(p, trainable_before[n]) for n, p in model.named_parameters() if p.requires_grad
    )
    frozen_encoder = [n for n in frozen_before if n.startswith("backbone.image_encoder.")]
    assert frozen_encoder and not any("adapter" in n for n in frozen_encoder)


def test_freeze_policy_and_counts(tiny_backbone):
    model = _build(tiny_backbone, classes=3)
    counts = model.parameter_counts()
    parts = [k for k in counts if k not in ("total", "trainable")]
    assert sum(counts[k] for k in parts) == counts["total"]
    assert counts["trainable"] == counts["decoder_adapters"] + counts["prompt_generator"] > 0
    assert counts["encoder_adapters"] == counts["depth_adapters"] == 0
    assert model.uses_frozen_encoder
    model.train()
    assert model.prompt_generator.training
    assert not any(m.training for m in model.backbone.modules())


def test_the_given_backbone_is_not_modified(tiny_backbone):
    model = _build(tiny_backbone, encoder_adapters=True, train_decoder=True)
    assert any(isinstance(m, AdaptedEncoderBlock) for m in model.backbone.image_encoder.modules())
    assert not any(isinstance(m, AdaptedEncoderBlock) for m in tiny_backbone.image_encoder.modules())
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    assert model.backbone.mask_decoder is not tiny_backbone.mask_decoder
    frozen = _build(tiny_backbone, decoder_adapters=False)
    assert frozen.backbone.image_encoder is tiny_backbone.image_encoder  # frozen parts are shared


def test_zero_initialised_decoder_adapters_equal_the_plain_decoder(tiny_backbone, tiny_slices):
    images, embeddings = tiny_slices
    model = _build(tiny_backbone, decoder_adapters=True)
    with torch.no_grad():
        prompts = model.prompt_generator(embeddings=embeddings[:2])
        inputs = {
            "boxes": prompts.boxes,
            "coarse_logits": prompts.coarse_logits,
            "class_tokens": prompts.class_tokens,
            "output_size": 256,
        }
        adapted = decode_classes(
            model.backbone.prompt_encoder, model.backbone.mask_decoder, embeddings[:2], **inputs
        )
        plain = decode_classes(
            tiny_backbone.prompt_encoder, tiny_backbone.mask_decoder, embeddings[:2], **inputs
        )
        out = model(embeddings=embeddings[:2])
    assert model.backbone.mask_decoder is not tiny_backbone.mask_decoder
    assert torch.allclose(adapted, plain, atol=1e-6)
    assert torch.allclose(out.class_mask_logits, adapted, atol=1e-6)


def test_zero_initialised_encoder_adapters_equal_the_frozen_encoder_per_slice(tiny_backbone, tiny_slices):
    images, embeddings = tiny_slices
    model = _build(tiny_backbone, depth=2, encoder_adapters=True, depth_adapter="encoder")
    with torch.no_grad():
        adapted = model.encode(_stack(images, 2))
    assert adapted.shape == (1, 2, 256, 64, 64)
    assert torch.allclose(adapted[0], embeddings[:2], atol=1e-6)


@pytest.mark.parametrize("placement", ["embedding", "encoder"])
def test_stack_of_depth_one_equals_the_2d_model(tiny_backbone, tiny_slices, placement):
    images, embeddings = tiny_slices
    changes = {"encoder_adapters": placement == "encoder", "depth_adapter": placement}
    model_2d = _build(tiny_backbone, **changes)
    model_3d = _build(tiny_backbone, depth=1, **changes)
    _randomise_trainable(model_2d)
    model_3d.load_trainable_state_dict(model_2d.trainable_state_dict())
    inputs = {"images": images[:1]} if placement == "encoder" else {"embeddings": embeddings[:1]}
    with torch.no_grad():
        flat = model_2d(**inputs)
        stacked = model_3d(**{key: value[:, None] for key, value in inputs.items()})
    assert stacked.logits.shape == (1, 1, 3, 256, 256)
    assert torch.equal(stacked.logits[:, 0], flat.logits)


def test_trained_embedding_depth_adapter_mixes_neighbouring_slices(tiny_backbone, tiny_slices):
    embeddings = tiny_slices[1]
    model = _build(tiny_backbone, classes=1, depth=3, depth_adapter="embedding", depth_kernel=(3, 1, 1))
    _randomise_trainable(model)
    changed = embeddings.clone()
    changed[2] = embeddings[0]  # change only the last slice
    with torch.no_grad():
        before = model(embeddings=embeddings[None]).class_mask_logits[0]
        after = model(embeddings=changed[None]).class_mask_logits[0]
    assert not torch.allclose(before[1], after[1], atol=1e-4)  # its neighbour sees the change
    assert torch.equal(before[0], after[0])  # a kernel of depth 3 reaches one slice only


@pytest.mark.parametrize("generator", ["encoder_head", "coarse_unet"])
def test_decoding_centre_slices_only_equals_the_centre_of_the_whole_stack(
    tiny_backbone, tiny_slices, generator
):
    """``decoded_slices=centre``: ``(B, 1)`` outputs, the same as the centre slice of a model that decodes
    every slice (with the same weights: the slices are decoded independently after the depth adapter)."""
    images, embeddings = tiny_slices
    options = {"classes": 2, "depth": 3, "depth_kernel": (3, 1, 1), "prompt_generator": generator}
    every = _trained_like(tiny_backbone, **options)
    centre = _with_weights_of(every, tiny_backbone, decoded_slices="centre", **options)
    assert centre.centre_slice_only and centre.output_depth == 1 and every.output_depth == 3
    with torch.no_grad():
        whole = every(images[None, :3], embeddings=embeddings[None, :3])
        only = centre(images[None, :3], embeddings=embeddings[None, :3])
    assert only.logits.shape == (1, 1, 3, 256, 256) and only.boxes.shape == (1, 1, 2, 4)
    for name in ("logits", "coarse_logits", "boxes", "presence_logits"):
        torch.testing.assert_close(
            getattr(only, name)[:, 0], getattr(whole, name)[:, 1], atol=1e-4, rtol=1e-4
        )


def test_a_2d_model_ignores_decoded_slices(tiny_backbone):
    assert not _build(tiny_backbone, decoded_slices="centre").centre_slice_only


def test_trained_encoder_depth_adapters_mix_neighbouring_slices(tiny_backbone, tiny_slices):
    images = tiny_slices[0]
    model = _build(tiny_backbone, classes=1, depth=2, depth_adapter="encoder", decoder_adapters=False)
    _randomise_trainable(model)
    changed = images[:2].clone()
    changed[1] = 1.0 - changed[1]
    with torch.no_grad():
        before = model.encode(images[None, :2])[0, 0]
        after = model.encode(changed[None])[0, 0]
    assert not torch.allclose(before, after, atol=1e-4)


def test_embeddings_path_equals_images_path_for_a_frozen_encoder(tiny_backbone, tiny_slices):
    images, embeddings = tiny_slices
    model = _build(tiny_backbone)
    _randomise_trainable(model)
    with torch.no_grad():
        encoded = model.encode(images[:1])
        from_images = model(images[:1])
        from_embeddings = model(embeddings=encoded)
        from_fp16_cache = model(embeddings=encoded.half())
    assert torch.equal(encoded, embeddings[:1])
    assert torch.equal(from_images.logits, from_embeddings.logits)
    assert from_fp16_cache.logits.dtype == torch.float32
    assert torch.allclose(from_fp16_cache.logits, from_images.logits, atol=0.05)


def test_embeddings_are_refused_when_the_encoder_trains(tiny_backbone):
    model = _build(tiny_backbone, encoder_adapters=True)
    assert not model.uses_frozen_encoder
    with pytest.raises(ValueError, match="frozen image encoder"):
        model(embeddings=torch.zeros(1, 256, 64, 64))


def test_coarse_unet_needs_images(tiny_backbone):
    model = _build(tiny_backbone, prompt_generator="coarse_unet")
    with pytest.raises(ValueError, match="coarse_unet"):
        model(embeddings=torch.zeros(1, 256, 64, 64))


@pytest.mark.parametrize(
    ("shape", "depth", "message"),
    [
        ((1, 2, 256, 256), 1, "expected 1 channel"),
        ((1, 1, 128, 128), 1, "256 x 256"),
        ((1, 3, 1, 256, 256), 2, "stack"),
    ],
)
def test_wrong_input_shapes_are_explained(tiny_backbone, shape, depth, message):
    model = _build(tiny_backbone, depth=depth)
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))


@pytest.mark.parametrize("generator", ["encoder_head", "coarse_unet"])
def test_trainable_state_dict_round_trip(tiny_backbone, tiny_slices, generator):
    images, embeddings = tiny_slices
    model = _build(tiny_backbone, prompt_generator=generator, train_decoder=True)
    _randomise_trainable(model)
    state = model.trainable_state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(state) and not any(k.startswith("backbone.image_encoder.") for k in state)
    fresh = _build(tiny_backbone, prompt_generator=generator, train_decoder=True)
    inputs = {"images": images[:1], "embeddings": embeddings[:1]}
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
        differs = not torch.equal(fresh(**inputs).logits, expected)
        fresh.load_trainable_state_dict(state)
        assert torch.equal(fresh(**inputs).logits, expected)
    assert differs


def test_loading_weights_of_another_configuration_is_a_clear_error(tiny_backbone):
    model = _build(tiny_backbone)
    other = _build(tiny_backbone, decoder_adapters=False)
    with pytest.raises(AutoPromptError, match="missing backbone.mask_decoder"):
        model.load_trainable_state_dict(other.trainable_state_dict())
    three = _build(tiny_backbone, classes=3)
    with pytest.raises(AutoPromptError, match="other sizes"):
        model.load_trainable_state_dict(three.trainable_state_dict())


def test_channel_mapping_for_sam():
    grey = torch.rand(2, 1, 4, 4)
    assert torch.equal(to_three_channels(grey), grey.repeat(1, 3, 1, 1))
    rgb = torch.rand(2, 3, 4, 4)
    assert to_three_channels(rgb) is rgb
    two = torch.rand(2, 2, 4, 4)
    assert torch.allclose(to_three_channels(two)[:, 2], two.mean(dim=1))


def test_backbone_name_must_match_the_config(tiny_backbone):
    with pytest.raises(ValueError, match="asks for 'litemedsam'"):
        build_autoprompt_sam(
            tiny_config(backbone="litemedsam"), num_classes=1, in_channels=1, backbone=tiny_backbone
        )


def test_teacher_boxes_replace_the_generated_boxes_only_where_asked(tiny_backbone, tiny_slices):
    _, embeddings = tiny_slices
    model = _trained_like(tiny_backbone, classes=2)
    emb = embeddings[:2]
    truth = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]]).expand(2, 2, 4)
    with torch.inference_mode():
        plain = model(embeddings=emb)
        forced = model(embeddings=emb, teacher_boxes=truth, teacher_mask=torch.tensor([True, False]))
    assert not torch.allclose(forced.class_mask_logits[0], plain.class_mask_logits[0])
    torch.testing.assert_close(forced.class_mask_logits[1], plain.class_mask_logits[1])
    torch.testing.assert_close(forced.boxes, plain.boxes)  # the generated boxes are still returned


def _boxes_given_to_sam(model, embeddings: torch.Tensor) -> list[torch.Tensor]:
    """The ``N x K x 4`` boxes (fractions of the window) of every decoder pass of one forward."""
    seen = []
    encoder = model.backbone.prompt_encoder
    frame_h, frame_w = encoder.input_image_size
    scale = torch.tensor([frame_w, frame_h, frame_w, frame_h], dtype=torch.float32)
    hook = encoder.register_forward_hook(
        lambda _module, _args, kwargs, _out: seen.append(kwargs["boxes"].float() / scale), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            model(embeddings=embeddings)
    finally:
        hook.remove()
    return [boxes.reshape(len(embeddings), model.num_classes, 4) for boxes in seen]


def test_coarse_mask_boxes_come_from_the_coarse_label_map(tiny_backbone, tiny_slices):
    _, embeddings = tiny_slices
    model = _trained_like(tiny_backbone, classes=3, box_source="coarse_mask", box_refinement=0)
    (boxes,) = _boxes_given_to_sam(model, embeddings[:2])
    with torch.inference_mode():
        coarse = model(embeddings=embeddings[:2]).coarse_logits
    torch.testing.assert_close(boxes, boxes_from_masks(exclusive_masks(coarse)))


def _one_pass_with_classes_present(backbone):
    """A 2-class model without refinement whose presence head judges both classes present, so the label map
    holds a class wherever its mask logit is above 0."""
    model = _trained_like(backbone, classes=2, box_refinement=0)
    with torch.no_grad():
        model.prompt_generator.heads.presence.bias.fill_(10.0)
    return model


def test_box_refinement_takes_each_pass_boxes_from_the_previous_label_map_in_eval_only(
    tiny_backbone, tiny_slices
):
    emb = tiny_slices[1][:2]
    single = _one_pass_with_classes_present(tiny_backbone)
    refined = _with_weights_of(single, tiny_backbone, classes=2, box_refinement=2)
    passes = _boxes_given_to_sam(refined, emb)
    assert len(passes) == 3
    with torch.inference_mode():
        first = single(embeddings=emb)
    present = label_masks(first.logits.argmax(dim=1), 2)
    assert present.flatten(2).any(-1).all()  # every class is in the first label map: its box is refined
    expected = torch.where(present.flatten(2).any(-1)[..., None], boxes_from_masks(present), passes[0])
    torch.testing.assert_close(passes[1], expected)
    assert not torch.allclose(passes[1], passes[0])
    assert len(_boxes_given_to_sam(refined.train(), emb)) == 1


def test_a_refinement_pass_decodes_again_only_the_classes_whose_box_moved_beyond_the_tolerance(
    tiny_backbone, tiny_slices
):
    emb = tiny_slices[1][:2]
    single = _one_pass_with_classes_present(tiny_backbone)
    full = _with_weights_of(single, tiny_backbone, classes=2, box_refinement=1)
    first_boxes, refined_boxes = _boxes_given_to_sam(full, emb)
    moved = (refined_boxes - first_boxes).abs().amax(dim=-1)  # N x K, fractions of the window
    tolerance = float(moved.min() + moved.max()) / 2
    redo = moved > tolerance
    assert redo.any() and not redo.all()
    partial = _with_weights_of(
        single, tiny_backbone, classes=2, box_refinement=1, refinement_tolerance=tolerance
    )
    with torch.inference_mode():
        first, refined = single(embeddings=emb), full(embeddings=emb)
    out, sizes = _decoder_batches(partial, emb)
    assert sizes == [4, int(redo.sum())]
    torch.testing.assert_close(
        out.class_mask_logits[redo], refined.class_mask_logits[redo], rtol=0, atol=1e-5
    )
    assert torch.equal(out.class_mask_logits[~redo], first.class_mask_logits[~redo])
    still = _with_weights_of(single, tiny_backbone, classes=2, box_refinement=2, refinement_tolerance=0.99)
    out, sizes = _decoder_batches(still, emb)  # no box moved that far: no refinement pass runs
    assert sizes == [4]
    assert torch.equal(out.logits, first.logits)


def _forced_presence(model, logits: torch.Tensor):
    """Make the presence head return ``N x K`` ``logits``; returns the hook handle."""
    return model.prompt_generator.heads.presence.register_forward_hook(lambda *_: logits[..., None])


def _decoder_batches(model, embeddings: torch.Tensor):
    """The output and the prompt count of every mask-decoder call of one forward."""
    sizes = []
    hook = model.backbone.mask_decoder.register_forward_hook(
        lambda _module, _args, kwargs, _out: sizes.append(len(kwargs["sparse_prompt_embeddings"])),
        with_kwargs=True,
    )
    try:
        with torch.inference_mode():
            out = model(embeddings=embeddings)
    finally:
        hook.remove()
    return out, sizes


@pytest.mark.parametrize(("floor", "refinement"), [(0.0, 1), (0.05, 0)])
def test_skipping_absent_classes_decodes_only_the_present_ones_with_the_same_logits(
    tiny_backbone, tiny_slices, floor, refinement
):
    _, embeddings = tiny_slices
    emb = embeddings[:2]
    plain = _trained_like(tiny_backbone, classes=2, presence_floor=floor, box_refinement=refinement)
    skipping = _with_weights_of(
        plain,
        tiny_backbone,
        classes=2,
        presence_floor=floor,
        box_refinement=refinement,
        skip_presence_below=0.5,
    )
    presence = torch.tensor([[20.0, 20.0], [-20.0, 20.0]])
    kept = presence > 0
    handles = [_forced_presence(model, presence) for model in (plain, skipping)]
    try:
        expected, all_sizes = _decoder_batches(plain, emb)
        out, sizes = _decoder_batches(skipping, emb)
    finally:
        for handle in handles:
            handle.remove()
    passes = 1 + refinement
    assert (all_sizes, sizes) == ([4] * passes, [3] * passes)
    assert skipping.train().decoded_classes(presence) is None  # training decodes every class
    if refinement:  # a skipped class absent from the label map anyway: the refined boxes are the same
        assert not label_masks(expected.logits.argmax(dim=1), 2)[~kept].any()
    # equal up to float rounding: a smaller batch may sum in another order
    torch.testing.assert_close(
        out.class_mask_logits[kept], expected.class_mask_logits[kept], rtol=0, atol=1e-5
    )
    torch.testing.assert_close(out.logits[:, 1:][kept], expected.logits[:, 1:][kept], rtol=0, atol=1e-5)
    assert bool((out.class_mask_logits[~kept] == ABSENT_LOGIT).all())
    assert bool((out.logits.softmax(dim=1)[:, 1:][~kept] == 0).all())


def test_a_window_with_every_class_skipped_is_background_without_a_decoder_call(tiny_backbone, tiny_slices):
    model = _build(tiny_backbone, classes=3, skip_presence_below=0.01).eval()
    handle = _forced_presence(model, torch.full((2, 3), -20.0))
    try:
        out, sizes = _decoder_batches(model, tiny_slices[1][:2])
    finally:
        handle.remove()
    assert sizes == []
    assert out.logits.shape == (2, 4, 256, 256) and bool(out.logits.isfinite().all())
    assert bool((out.logits.argmax(dim=1) == 0).all())


def test_a_skipped_square_and_a_decoded_whole_window_combine_in_bf16(tiny_backbone, tiny_slices):
    """Under a CPU's bf16 autocast the decoder returns bf16 logits, a slice with every class skipped float32."""
    model = _build(
        tiny_backbone, classes=2, box_refinement=0, inference_region_tokens=32, skip_presence_below=0.5
    ).eval()
    coarse = torch.full((2, 2, 64, 64), -10.0)
    coarse[0, 1, 20:30, 25:35] = 10.0  # slice 0 fits a square, slice 1 (no foreground) is decoded whole
    handles = [
        model.prompt_generator.heads.coarse.register_forward_hook(lambda *_: coarse),
        _forced_presence(model, torch.tensor([[-20.0, -20.0], [20.0, 20.0]])),  # slice 0: both skipped
    ]
    try:
        with autocast(torch.device("cpu"), Precision.BF16):
            out, _ = _decoder_batches(model, tiny_slices[1][:2])
    finally:
        for handle in handles:
            handle.remove()
    assert bool((out.logits[0].argmax(dim=0) == 0).all())  # the skipped slice is background
    assert bool(out.class_mask_logits[1].float().isfinite().all())
    assert bool((out.class_mask_logits[1] > ABSENT_LOGIT / 2).all())  # decoded, not left absent


def test_inference_regions_decode_a_small_foreground_on_its_square_and_an_empty_slice_whole(
    tiny_backbone, tiny_slices
):
    _, embeddings = tiny_slices
    emb = embeddings[:2]
    plain = _trained_like(tiny_backbone, classes=2, box_refinement=0)
    regional = _with_weights_of(plain, tiny_backbone, classes=2, box_refinement=0, inference_region_tokens=32)
    coarse = torch.full((2, 2, 64, 64), -10.0)
    coarse[0, 1, 20:30, 25:35] = 10.0  # slice 0: class 2 on 10 x 10 tokens; slice 1: no foreground
    handles = [
        m.prompt_generator.heads.coarse.register_forward_hook(lambda *_: coarse) for m in (plain, regional)
    ]
    try:
        expected, _ = _decoder_batches(plain, emb)
        out, sizes = _decoder_batches(regional, emb)
        with torch.inference_mode():
            prompts = regional.prompt_generator(embeddings=emb)
    finally:
        for handle in handles:
            handle.remove()
    assert sizes == [2, 2]  # slice 0's two classes on the square, slice 1's in the whole window
    torch.testing.assert_close(out.class_mask_logits[1], expected.class_mask_logits[1], rtol=0, atol=1e-5)
    decoded = out.class_mask_logits[0] != ABSENT_LOGIT
    rows, columns = decoded.any(dim=(0, 2)).nonzero()[:, 0], decoded.any(dim=(0, 1)).nonzero()[:, 0]
    assert (len(rows), len(columns)) == (128, 128)  # 32 tokens of 4 pixels
    top, left = int(rows[0]), int(columns[0])
    assert top <= 4 * 20 - 16 and top + 128 >= 4 * 30 + 16  # the foreground with 4 tokens on each side
    assert left <= 4 * 25 - 16 and left + 128 >= 4 * 35 + 16
    with torch.inference_mode():
        square = decode_classes(
            regional.backbone.prompt_encoder,
            regional.backbone.mask_decoder,
            emb[:1],
            boxes=regional.first_boxes(boxes=prompts.boxes, coarse_logits=prompts.coarse_logits)[:1],
            coarse_logits=prompts.coarse_logits[:1],
            class_tokens=prompts.class_tokens[:1],
            output_size=256,
            region=DecoderRegion(torch.tensor([[top // 4, left // 4]]), tokens=32, grid=64),
        )
    torch.testing.assert_close(out.class_mask_logits[0][:, top : top + 128, left : left + 128], square[0])


@pytest.mark.parametrize("generator", ["encoder_head", "coarse_unet"])
def test_a_backbone_built_for_a_small_window_keeps_its_weights_and_gives_a_quarter_size_grid(generator):
    from autoprompt.modeling.backbone import load_backbone

    small = load_backbone("tiny", window=80)
    native = load_backbone("tiny")
    assert small.model_input_size == 80 and small.embedding_size == (20, 20)
    assert small.prompt_encoder.mask_input_size == (80, 80)
    for (name, weight), (_, native_weight) in zip(
        small.state_dict().items(), native.state_dict().items(), strict=True
    ):
        assert torch.equal(weight, native_weight), name  # the same weights, only the frames differ
    small.encoder_runtime = "eager"
    images = torch.rand(2, 1, 80, 80, generator=torch.Generator().manual_seed(0))
    model = _build(small, classes=2, prompt_generator=generator, head_context_levels=3).eval()
    with torch.no_grad():
        out = model(images)
    assert out.logits.shape == (2, 3, 80, 80) and out.boxes.shape == (2, 2, 4)
    assert torch.isfinite(out.logits).all()
    with torch.no_grad():  # the grid follows the window: one slice alone gives its own embedding
        assert small.encode(images[:1].expand(-1, 3, -1, -1)).shape == (1, 256, 20, 20)


@pytest.mark.parametrize(("name", "window"), [("tiny", 72), ("tiny", 48), ("tiny", 512), ("sam_vit_b", 512)])
def test_a_window_the_backbone_cannot_take_is_refused(name, window):
    from autoprompt.modeling.backbone import load_backbone

    with pytest.raises(AutoPromptError, match=f"cannot take {window} x {window} windows"):
        load_backbone(name, window=window)
