"""NumPy references of the position encodings, shared by the layer tests."""

import math

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


def numpy_rope(x, start=0, base=10000.0, frequencies=None):
    """Rotate each pair (x[j], x[j + d/2]) by the angle pos / base^(2j/d) (or pos *
    frequencies[j]), as complex numbers."""
    d = x.shape[-1]
    half = d // 2
    pairs = x[..., :half] + 1j * x[..., half:]  # (B, T, N, d/2)
    positions = start + np.arange(x.shape[1])
    if frequencies is None:
        frequencies = 1 / base ** (2 * np.arange(half) / d)
    angles = positions[:, None] * np.asarray(frequencies)[None, :]  # (T, d/2)
    rotated = pairs * np.exp(1j * angles)[None, :, None, :]
    return np.concatenate([rotated.real, rotated.imag], axis=-1)


def llama3_frequencies(dim, base, factor, low_freq_factor, high_freq_factor, original_context):
    """Llama 3.1's RoPE frequencies, written as Meta's reference `apply_scaling` does it:
    one frequency at a time."""
    low_freq_wavelength = original_context / low_freq_factor
    high_freq_wavelength = original_context / high_freq_factor
    frequencies = []
    for j in range(dim // 2):
        frequency = 1 / base ** (2 * j / dim)
        wavelength = 2 * math.pi / frequency
        if wavelength < high_freq_wavelength:
            frequencies.append(frequency)
        elif wavelength > low_freq_wavelength:
            frequencies.append(frequency / factor)
        else:
            smooth = (original_context / wavelength - low_freq_factor) / (
                high_freq_factor - low_freq_factor
            )
            frequencies.append((1 - smooth) * frequency / factor + smooth * frequency)
    return np.array(frequencies)
