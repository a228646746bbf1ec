"""Offline video preprocessing for STIV (`stiv-prep`): raw videos -> filtered, captioned clips ->
latent shards. Stages: probe, scenes, features, filter, caption, classify, dsg, encode."""
