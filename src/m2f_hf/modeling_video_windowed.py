"""Windowed inference for long clips (our design, not in the original).

The original runs the whole clip through the decoder at once, so memory grows with the number of frames
(every decoder layer attends over T·h·w tokens and the backbone keeps all frames' features). Here the clip
is cut into windows of `window` frames; each window runs through the model on its own, and the Q queries
of a window are linked to the running tracks of the previous windows by a one-to-one assignment
(Hungarian) on the cosine similarity of the queries' final decoder embeddings (`decoder_norm` output). A
track's class logits are the frame-weighted mean over its windows; its mask tube is the concatenation of
the linked queries' tubes. The result has the layout of a full-clip forward, so the same post-processing
applies. Peak activation memory is that of one window; only the low-resolution mask logits (Q, T, h, w)
grow with T.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from .modeling_video_m2f import Mask2FormerVideoModelOutput


@torch.no_grad()
def windowed_video_inference(
    model, pixel_values_videos: torch.Tensor, window: int = 16
) -> Mask2FormerVideoModelOutput:
    """One clip (1, T, 3, H, W) or (T, 3, H, W) through `model` (a video model) in windows of `window` frames.

    Returns `class_queries_logits` (1, Q, K+1), `masks_queries_logits` (1, Q, T, h, w) and
    `transformer_decoder_last_hidden_state` (1, Q, C) of the last window, in track order.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    clip = pixel_values_videos[0] if pixel_values_videos.dim() == 5 else pixel_values_videos
    if pixel_values_videos.dim() == 5 and pixel_values_videos.shape[0] != 1:
        raise ValueError("windowed inference takes one clip at a time")
    frames = clip.shape[0]
    class_sum = masks = track_embed = None
    for start in range(0, frames, window):
        part = clip[start : start + window]
        out = model(part[None], output_hidden_states=True, output_auxiliary_logits=False)
        logits, tubes = out.class_queries_logits[0], out.masks_queries_logits[0]
        embed = torch.nn.functional.normalize(out.transformer_decoder_last_hidden_state[0].float(), dim=-1)
        if track_embed is None:
            order = torch.arange(logits.shape[0])
            class_sum = logits.float() * part.shape[0]
            masks = [tubes]
        else:
            similarity = track_embed @ embed.T  # (tracks, queries)
            rows, cols = linear_sum_assignment(similarity.cpu().numpy(), maximize=True)
            order = torch.as_tensor(cols)[torch.as_tensor(rows).argsort()]
            class_sum += logits[order].float() * part.shape[0]
            masks.append(tubes[order])
        track_embed = embed[order]
    return Mask2FormerVideoModelOutput(
        class_queries_logits=(class_sum / frames)[None],
        masks_queries_logits=torch.cat(masks, dim=1)[None],
        transformer_decoder_last_hidden_state=track_embed[None],
    )


__all__ = ["windowed_video_inference"]
