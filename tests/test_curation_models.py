"""Feature models: PP-OCRv4 text area on real frames, the Flax CLIP vision tower against
transformers, and the LAION-style aesthetic predictor (tiny random weights saved as a user has
them) with its per-clip source; the proxies stay as named fallbacks."""
import json
import os

import cv2
import numpy as np
import pytest

from data_pipeline import config as config_lib
from data_pipeline import features as features_lib
from data_pipeline import probe as probe_lib
from data_pipeline import stages
from data_pipeline import testvideos
from data_pipeline.models import aesthetic as aesthetic_lib
from data_pipeline.models import ocr as ocr_lib
from stiv_jax import video_io
from stiv_jax.models.encoders import clip_vision

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def detector():
  return ocr_lib.TextAreaDetector()


def _with_text(frames: np.ndarray) -> np.ndarray:
  out = frames.copy()
  h, w = out.shape[1:3]
  for f in out:
    cv2.putText(f, "BREAKING NEWS TODAY", (w // 16, int(h * 0.85)), cv2.FONT_HERSHEY_SIMPLEX,
                h / 250, (255, 255, 255), max(1, h // 120), cv2.LINE_AA)
  return out


def test_ocr_text_area_is_near_zero_without_text_and_clear_with_it(detector):
  for name in ("bigbuckbunny", "carphone"):
    frames = video_io.read_display_frames(testvideos.real_clip_path(name), [5, 60],
                                          size=(320, 568) if name == "bigbuckbunny" else None)
    plain = detector(frames)
    texted = detector(_with_text(frames))
    assert plain < 0.01, (name, plain)
    assert texted > 0.03 and texted > 5 * plain, (name, plain, texted)
  assert ocr_lib.boxes_from_probability(np.zeros((64, 64), np.float32), 0.3, 0.5, 1.6) == []
  assert ocr_lib.det_input_size(720, 1280, 320) == (320, 576)


def test_fused_features_use_real_ocr_and_name_the_sources(detector, tmp_path):
  path = testvideos.real_clip_path("carphone")
  cfg = config_lib.get_config()
  cfg.scenes.detectors = ("content", "adaptive", "threshold")  # TransNetV2 is tested elsewhere
  row = probe_lib.probe_video(os.path.dirname(path), os.path.basename(path), cfg)
  assert row["sample_aspect"] == [128, 117] and row["display_width"] == 193
  ex = features_lib.FeatureExtractor(cfg.features)
  rows, _ = stages.analyze_video(row, cfg, ex)
  assert rows
  r = rows[0]
  assert (r["ocr_backend"], r["ocr_source"], r["aesthetic_source"]) == (
      "ppocr_v4_det", "ppocr", "proxy")
  assert r["ocr_height"] == 320 and r["ocr_frames"] == cfg.features.ocr_num_frames
  assert r["text_fraction"] < 0.01
  alone = features_lib.features_for_clip({k: r[k] for k in (
      "id", "path", "start", "end", "height", "width", "orientation", "rotation",
      "sample_aspect")}, ex)
  assert alone["text_fraction"] == pytest.approx(r["text_fraction"], abs=0.01)
  cfg.features.ocr_backend = "proxy"
  assert features_lib.FeatureExtractor(cfg.features).ocr_source == "proxy"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
  """A tiny random CLIPVisionModelWithProjection folder and a LAION-layout MLP file."""
  d = str(tmp_path_factory.mktemp("clip"))
  cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, image_size=32, patch_size=8,
                                      projection_dim=16)
  torch.manual_seed(0)
  model = transformers.CLIPVisionModelWithProjection(cfg).eval()
  model.save_pretrained(d)
  mlp = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Dropout(0.2),
                            torch.nn.Linear(12, 4), torch.nn.Dropout(0.1), torch.nn.Linear(4, 1))
  from safetensors.torch import save_file
  mlp_path = os.path.join(d, "aesthetic_mlp.safetensors")
  save_file({f"layers.{k}": v.contiguous() for k, v in mlp.state_dict().items()}, mlp_path)
  return d, model, mlp, mlp_path


def test_clip_vision_tower_matches_transformers(tiny_clip):
  d, model, _, _ = tiny_clip
  x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    ref = model(pixel_values=torch.from_numpy(x))
  tower = clip_vision.load_clip_vision_model(d)
  pooled, embeds = tower(np.transpose(x, (0, 2, 3, 1)))
  want = ref.image_embeds.numpy()
  assert np.abs(np.asarray(embeds) - want).max() <= 1e-4 * np.abs(want).max()
  # A CLIPVisionModel (no projection) loads too; a text config is refused by name.
  base = os.path.join(d, "base")
  transformers.CLIPVisionModel(model.config).save_pretrained(base)
  assert clip_vision.load_clip_vision_model(base).visual_projection is None
  with open(os.path.join(base, "config.json")) as fh:
    conf = json.load(fh)
  conf["model_type"] = "clip_text_model"
  with open(os.path.join(base, "config.json"), "w") as fh:
    json.dump(conf, fh)
  with pytest.raises(ValueError, match="model_type 'clip_text_model'"):
    clip_vision.load_clip_vision_model(base)


def test_laion_aesthetic_matches_torch_and_rows_say_which_ran(tiny_clip):
  d, model, mlp, mlp_path = tiny_clip
  frames = np.random.default_rng(1).integers(0, 255, (3, 40, 56, 3), dtype=np.uint8)
  scorer = aesthetic_lib.LaionAesthetic(d, mlp_path)
  pixels = clip_vision.preprocess(frames, 32)
  with torch.no_grad():
    emb = model(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))).image_embeds
    want = mlp.eval()(emb / emb.norm(dim=-1, keepdim=True))[:, 0].numpy()
  np.testing.assert_allclose(scorer.scores(frames), want, rtol=1e-4, atol=1e-5)
  fcfg = config_lib.get_config("tiny").features
  fcfg.aesthetic_clip_path, fcfg.aesthetic_mlp_path = d, mlp_path
  ex = features_lib.FeatureExtractor(fcfg)
  row = ex(frames[..., ::-1], [0, 4, 8], dict(id="x", height=40, width=56,
                                             orientation="landscape"))
  assert (row["aesthetic_source"], row["aesthetic_backend"]) == ("laion", "laion_mlp")
  assert row["aesthetic"] == pytest.approx(float(np.mean(want)), rel=1e-4, abs=1e-5)
  fcfg.aesthetic_mlp_path = ""
  assert features_lib.FeatureExtractor(fcfg).aesthetic_source == "proxy"  # auto, no weights
  fcfg.aesthetic_backend = "laion"
  with pytest.raises(ValueError, match="aesthetic_mlp_path"):
    features_lib.FeatureExtractor(fcfg)
  with pytest.raises(ValueError, match="takes 7-d embeddings"):
    from safetensors.numpy import save_file
    bad = os.path.join(d, "bad.safetensors")
    save_file({"layers.0.weight": np.zeros((1, 7), np.float32)}, bad)
    aesthetic_lib.LaionAesthetic(d, bad)
