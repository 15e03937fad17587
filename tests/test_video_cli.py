"""`m2f-hf predict-video` on a folder of frames with a tiny video model."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import tiny_video_config
from PIL import Image

from m2f_hf.ecosystem_cli import main
from m2f_hf.modeling_video_m2f import Mask2FormerForVideoInstanceSegmentation
from m2f_hf.processing_video_m2f import M2fHfVideoProcessor


def test_predict_video_folder(tmp_path):
    config = tiny_video_config()
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    Mask2FormerForVideoInstanceSegmentation(config).save_pretrained(model_dir)
    M2fHfVideoProcessor(
        size={"shortest_edge": 64, "longest_edge": 96}, test_topk_per_image=4
    ).save_pretrained(model_dir)
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for t in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(frames / f"{t:03d}.png")
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict-video",
                str(frames),
                "--model",
                str(model_dir),
                "--output",
                str(out),
                "--threshold",
                "0",
            ]
        )
        == 0
    )
    summary = json.loads((out / "instances.json").read_text())
    assert summary["num_frames"] == 4 and len(summary["instances"]) == 4
    gif = Image.open(out / "overlay.gif")
    assert gif.n_frames == 4 and gif.size == (64, 48)
    assert sorted(p.name for p in out.glob("frame_*.png")) == [f"frame_{t:05d}.png" for t in range(4)]
    colors = [tuple(i["color"]) for i in summary["instances"]]
    assert len(set(colors)) == len(colors)
    # windowed inference through the command line gives the same instances when the window covers the clip
    out2 = tmp_path / "out2"
    main(
        [
            "predict-video",
            str(frames),
            "--model",
            str(model_dir),
            "--output",
            str(out2),
            "--threshold",
            "0",
            "--window",
            "8",
        ]
    )
    assert json.loads((out2 / "instances.json").read_text())["instances"] == summary["instances"]


def test_read_frames_from_a_video_file(tmp_path):
    import pytest

    av = pytest.importorskip("av")
    from m2f_hf.ecosystem_video import read_frames

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for t in range(6):
            array = np.zeros((48, 64, 3), dtype=np.uint8)
            array[:, t * 8 : t * 8 + 16] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = read_frames(path)
    assert len(frames) == 6 and frames[0].size == (64, 48)
    bright = [int(np.asarray(f)[24, :, 0].argmax()) for f in frames]
    assert bright == sorted(bright) and bright[-1] > bright[0]  # the bar moves right: frames in order
    assert len(read_frames(path, max_frames=3)) == 3
