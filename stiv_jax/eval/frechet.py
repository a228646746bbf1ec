"""Fréchet distance between Gaussians fitted to two feature sets (the FID / FVD statistic)."""
from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Features [N, D] -> (mean [D], covariance [D, D]) in float64 (unbiased covariance)."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"gaussian_stats: need features [N >= 2, D], got shape {f.shape}")
  return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
  """Symmetric square root of a positive semi-definite matrix (negative eigenvalues clipped)."""
  w, v = np.linalg.eigh((s + s.T) / 2.0)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)); exactly 0 for identical statistics.

  tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
  matrix S1^(1/2) S2 S1^(1/2), which is stable for singular covariances (few samples).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(f"frechet_distance: shape mismatch mu {mu1.shape}/{mu2.shape}, "
                     f"sigma {s1.shape}/{s2.shape}")
  if np.array_equal(mu1, mu2) and np.array_equal(s1, s2):
    return 0.0
  r1 = _psd_sqrt(s1)
  m = r1 @ s2 @ r1
  ev = np.linalg.eigvalsh((m + m.T) / 2.0)
  tr_covmean = float(np.sum(np.sqrt(np.clip(ev, 0.0, None))))
  diff = mu1 - mu2
  d = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
  return max(d, 0.0)


def frechet_distance_from_features(a: np.ndarray, b: np.ndarray) -> float:
  """Fréchet distance between the Gaussians of feature sets a [N, D] and b [M, D]."""
  return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
