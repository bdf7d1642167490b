"""Promptable segmentation with the pretrained SAM backbone alone (MedSAM / LiteMedSAM style), no training.

- :mod:`~autoprompt.interactive.predictor`: :class:`~autoprompt.interactive.predictor.InteractivePredictor`
  keeps a slice's embedding (``set_image``) and answers box and point prompts from it (``predict``), like
  segment-anything's ``SamPredictor``; ``ModelOptions`` names the backbone, device and precision.
- :mod:`~autoprompt.interactive.images`: an image file or array with its geometry and clipping range.
- :mod:`~autoprompt.interactive.segment` (one slice), :mod:`~autoprompt.interactive.volume` (through a
  volume from a 3D box) and :mod:`~autoprompt.interactive.embedding` (the encoder's embeddings) wrap the
  predictor for image files and write their results atomically (``autoprompt segment`` / ``embed``).

Preprocessing follows LiteMedSAM's published inference (``CVPR24_LiteMedSAM_infer.py``): intensities of
a medical image are clipped at its 0.5 / 99.5 percentiles (of the whole volume for 3D images, of the slice
for 2D ones; 8-bit pictures are not clipped), the slice's longest side is resized to 256 keeping the aspect
ratio, min-max scaled to [0, 1], repeated to 3 channels and zero-padded at the bottom/right to 256 x 256.
Prompts in the image's pixel coordinates (x = column, y = row) are scaled into that frame; the decoder's
256 x 256 logits are cropped to the resized slice, resized bilinearly to the slice's size and thresholded
at sigmoid 0.5.
"""
