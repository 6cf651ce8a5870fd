"""Weight quantization: symmetric int8 per output column, and MatMulNBits' 4-bit blocks."""

from __future__ import annotations

import numpy as np

from modernbert_edge.quantize.kernels import pair_safe_int8_columns

INT4_BLOCK = 32


def quantize_int8_columns(w_kn: np.ndarray, product: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column, W ≈ q * scale, q in [-127, 127]. For a weight that an int8
    product reads (`product`), exact on every int8 kernel class: no same-sign pair of adjacent weights
    along K sums above 128 (quantize/kernels.py); a table that is only gathered from gets amax/127."""
    if product:
        return pair_safe_int8_columns(w_kn)
    amax = np.abs(w_kn).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return np.clip(np.rint(w_kn / scale), -127, 127).astype(np.int8), scale


def dequantize_int8_columns(w_kn: np.ndarray) -> np.ndarray:
    """W as the int8 graph holds it: quantize_int8_columns, then back to float32."""
    q, scale = quantize_int8_columns(w_kn)
    return q.astype(np.float32) * scale


def quantize_int4_blocks(w_kn: np.ndarray, block: int = INT4_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits layout: B (N, K/block, block/2) uint8, two 4-bit values per byte (low first),
    zero point 8 (the default), scales (N * K/block,)."""
    k, n = w_kn.shape
    nb = -(-k // block)
    wt = np.zeros((n, nb * block), dtype=np.float32)
    wt[:, :k] = w_kn.T
    wt = wt.reshape(n, nb, block)
    amax = np.abs(wt).max(axis=2)
    scale = np.where(amax > 0, amax / 7.0, 1.0).astype(np.float32)
    q = (np.clip(np.rint(wt / scale[:, :, None]), -8, 7) + 8).astype(np.uint8)
    packed = q[:, :, 0::2] | (q[:, :, 1::2] << 4)
    return packed, scale.reshape(-1)
