"""NumPy references of the position encodings, shared by the layer tests."""

import numpy as np


def numpy_sinusoidal(positions, dim):
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d))."""
    pe = np.zeros((len(positions), dim))
    for p, pos in enumerate(positions):
        for j in range(dim):
            i = j // 2
            angle = pos / 10000 ** (2 * i / dim)
            pe[p, j] = np.sin(angle) if j % 2 == 0 else np.cos(angle)
    return pe


def numpy_rope(x, start=0, base=10000.0):
    """Rotate each pair (x[j], x[j + d/2]) by the angle pos / base^(2j/d), as complex numbers."""
    d = x.shape[-1]
    half = d // 2
    pairs = x[..., :half] + 1j * x[..., half:]  # (B, T, N, d/2)
    positions = start + np.arange(x.shape[1])
    angles = positions[:, None] / base ** (2 * np.arange(half) / d)  # (T, d/2)
    rotated = pairs * np.exp(1j * angles)[None, :, None, :]
    return np.concatenate([rotated.real, rotated.imag], axis=-1)
