"""Winograd's minimal filtering F(m x m, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray 2015).

An (m+2)x(m+2) input tile d and a 3x3 filter g give the m x m output tile
A^T [(G g G^T) * (B^T d B)] A: (m+2)^2 multiplications instead of 9 m^2. Over a whole layer the
elementwise products become (m+2)^2 GEMMs (one per tile position) over the channels: F(4x4, 3x3)
does 4x fewer flops than im2col's single GEMM, F(2x2, 3x3) 2.25x, for transforms that are
themselves one small GEMM each (input and output). It pays where the channel counts and the
number of tiles are large enough for those GEMMs to run at full speed.

The transformed filters take (m+2)^2 / 9 times the weights' memory (4x for F(4x4)), so F(4x4)
is used only where that stays small and F(2x2) (1.8x) elsewhere: peak RSS must not grow.

The transforms are exact in real arithmetic; in float32 the result differs from direct
convolution by a few units in the 6th significant digit (measured: <= 1e-5 of the output's
magnitude for F(4x4), <= 1e-6 for F(2x2), on random 64-512 channel layers).

numpy only: this module ships to the device.
"""

from __future__ import annotations

import numpy as np

# B^T, G, A^T per output tile side m: F(2, 3) on points 0, +-1, infinity; F(4, 3) adds +-2
B_T4 = np.array([[4, 0, -5, 0, 1, 0],
                 [0, -4, -4, 1, 1, 0],
                 [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0],
                 [0, 2, -1, -2, 1, 0],
                 [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G4 = np.array([[1 / 4, 0, 0],
               [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6],
               [0, 0, 1]], dtype=np.float64)
A_T4 = np.array([[1, 1, 1, 1, 1, 0],
                 [0, 1, -1, 2, -2, 0],
                 [0, 1, 1, 4, 4, 0],
                 [0, 1, -1, 8, -8, 1]], dtype=np.float64)

B_T2 = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G2 = np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]], dtype=np.float64)
A_T2 = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
TRANSFORMS = {2: (B_T2, G2, A_T2), 4: (B_T4, G4, A_T4)}

# Where it pays on a 1-core AVX-512 machine (measured per layer against im2col + GEMM):
# F(4x4) on 64 channels at 56x56 1.9 -> 1.1 ms, on 128 at 28x28 1.7 -> 1.0 ms (F(2x2) 1.4 ms);
# 256 channels at 14x14 (16 tiles) about even; 16-32 input channels lose.
MIN_CHANNELS = 64
MIN_TILES = 36
# Not F(2x2) where F(4x4) has too few tiles, though it would pay there (256 channels at 14x14,
# 49 tiles: 1.5 -> 1.0 ms): its filters take 16/9 of the weights' memory beside them, +21 MB
# of peak RSS on ResNet-50's five such layers.
# F(4x4) where its transformed filters take at most this much more memory than the weights
MAX_EXTRA_BYTES = 1 << 20


def tile_for(channels: int, outputs: int, out_h: int, out_w: int, itemsize: int = 4) -> int | None:
    """The output tile side m for a 3x3 stride-1 dense conv of this size, or None where plain
    im2col + GEMM is faster."""
    tiles = -(-out_h // 4) * -(-out_w // 4)
    if min(channels, outputs) < MIN_CHANNELS or tiles < MIN_TILES:
        return None
    return 4 if 27 * channels * outputs * itemsize <= MAX_EXTRA_BYTES else 2


def filter_transform(w: np.ndarray, m: int) -> np.ndarray:
    """(M, C, 3, 3) filters -> U ((m+2)^2, M, C): G g G^T per filter, tile position first."""
    mo, c = w.shape[:2]
    gg = np.kron(TRANSFORMS[m][1], TRANSFORMS[m][1])
    u = np.empty((len(gg), mo, c), dtype=w.dtype)
    # in float64, a few filters at a time: large temporaries would stay in the heap (peak RSS)
    step = max(1, 4096 // c)
    for m0 in range(0, mo, step):
        chunk = w[m0:m0 + step].reshape(-1, 9).T.astype(np.float64)
        u[:, m0:m0 + step] = (gg @ chunk).reshape(len(gg), -1, c)
    return u


def input_matrix(m: int, dtype) -> np.ndarray:
    """((m+2)^2, (m+2)^2): V = this @ D maps the positions of tiles d to those of B^T d B."""
    return np.kron(TRANSFORMS[m][0], TRANSFORMS[m][0]).astype(dtype)


def output_matrix(m: int, dtype) -> np.ndarray:
    """(m^2, (m+2)^2): Y = this @ M maps the products to the outputs A^T M A."""
    return np.kron(TRANSFORMS[m][2], TRANSFORMS[m][2]).astype(dtype)
