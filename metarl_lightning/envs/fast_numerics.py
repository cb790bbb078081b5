"""Bit-exact, cheaper stand-ins for the numpy / scipy / reward_utils calls Meta-World v3 makes per step.

Each function returns exactly what the library call it replaces returns, for the argument types
Meta-World passes (float64 1-D arrays and float64 scalars); on anything else it calls the library
itself. What makes the library calls slow on 3-vectors is their Python-level argument handling,
not the arithmetic, so each stand-in performs the *same* floating-point operations in the same
order and drops only the dispatch. `tests/test_fast_step.py` checks every one against its library
twin on random inputs, and every env side by side. No torch here (env workers import `envs/`).
"""

from __future__ import annotations

import math
import types

import numpy as np
from metaworld.utils import reward_utils
from numpy._core.umath import clip as uclip  # the ufunc behind np.clip, without its wrapper
from scipy.spatial.transform import Rotation

_ndarray = np.ndarray
_f64 = np.float64
_f64_dtype = np.dtype(np.float64)
_np_norm = np.linalg.norm
_np_hstack = np.hstack
_concatenate = np.concatenate
_np_exp = np.exp


def norm(x, ord=None, axis=None, keepdims=False):
    """`np.linalg.norm` for 1-D float64 vectors: numpy's own fast case, `sqrt(x.ravel('K').dot(x))`
    (numpy/linalg/_linalg.py, "Immediately handle some default, simple, fast, and common cases"),
    with the same dot product (BLAS ddot) so the sum is rounded identically. IEEE sqrt is
    correctly rounded, so math.sqrt equals np.sqrt."""
    if (type(x) is _ndarray and axis is None and not keepdims and x.dtype is _f64_dtype
            and x.ndim == 1 and (ord is None or ord == 2)):
        if not x.flags.c_contiguous:  # ravel('K') copies a strided vector; strided ddot sums differently
            x = x.ravel(order="K")
        return _f64(math.sqrt(x.dot(x)))
    if (type(x) is _f64 or type(x) is float) and ord is None and axis is None and not keepdims:
        # a scalar: numpy's path makes it a 1-element vector, whose dot is the single product
        return _f64(math.sqrt(x * x))
    return _np_norm(x, ord=ord, axis=axis, keepdims=keepdims)


def hstack(tup, *, dtype=None, casting="same_kind"):
    """`np.hstack` of 1-D arrays is `np.concatenate(tup, 0)` (numpy/_core/shape_base.py)."""
    if dtype is None and casting == "same_kind" and type(tup) in (tuple, list) and tup:
        for a in tup:
            if type(a) is not _ndarray or a.ndim != 1:
                break
        else:
            return _concatenate(tup)
    return _np_hstack(tup, dtype=dtype, casting=casting)


# -- reward_utils.tolerance ------------------------------------------------------------------------
_SCALARS = (float, _f64, int)
_gauss_scale: dict[float, np.floating] = {}


def tolerance(x, bounds=(0.0, 0.0), margin=0.0, sigmoid="gaussian",
              value_at_margin=reward_utils._DEFAULT_VALUE_AT_MARGIN):
    """`reward_utils.tolerance` (dm_control's) for a scalar x and the two sigmoids Meta-World uses.

    The stock code runs `np.where` on 0-d arrays and returns `.item()`; here the same operations
    run on scalars: `d = (lower - x or x - upper) / margin`, then long_tail `1 / ((d*s)**2 + 1)`,
    gaussian `np.exp(-0.5 * (d*s)**2)` (numpy's exp, not libm's, which may round differently).
    `d*s` is a numpy *scalar* in the stock code (ufuncs on 0-d arrays return scalars), whose `**2`
    is libm `pow`, like Python's float `**`, and not the `x*x` numpy uses for arrays: the two
    differ in the last bit for ~1 in 3000 inputs (tested)."""
    if (type(x) not in _SCALARS or type(margin) not in _SCALARS
            or sigmoid not in ("long_tail", "gaussian")):
        return reward_utils.tolerance(x, bounds=bounds, margin=margin, sigmoid=sigmoid,
                                      value_at_margin=value_at_margin)
    lower, upper = bounds
    if lower > upper:
        raise ValueError("Lower bound must be <= upper bound.")
    if margin < 0:
        raise ValueError(f"`margin` must be non-negative. Current value: {margin}")
    in_bounds = lower <= x and x <= upper
    if margin == 0:
        return 1.0 if in_bounds else 0.0
    if not 0 < value_at_margin < 1:  # the stock code evaluates the sigmoid (and this check) always
        raise ValueError(f"`value_at_1` must be strictly between 0 and 1, got {value_at_margin}.")
    if in_bounds:
        return 1.0
    d = (lower - x if x < lower else x - upper) / margin
    if sigmoid == "long_tail":
        t = d * math.sqrt(1 / value_at_margin - 1)
        return float(1 / (t**2 + 1))
    scale = _gauss_scale.get(value_at_margin)
    if scale is None:  # the stock expression, once per value
        scale = _gauss_scale[value_at_margin] = np.sqrt(-2 * np.log(value_at_margin))
    t = float(d * scale)
    return float(_np_exp(_f64(-0.5 * t**2)))


# -- scipy Rotation.from_matrix(m).as_quat() ------------------------------------------------------
def _markley(m00, m01, m02, m10, m11, m12, m20, m21, m22):
    """scipy's `_from_matrix_orthogonal` (scipy/spatial/transform/_rotation_cy.pyx: Markley 2008,
    argmax over (m00, m11, m22, trace), ties to the first, then `_normalize4`), operation for
    operation, in Python floats (C doubles without FMA contraction, as in the x86-64 wheel)."""
    tr = m00 + m11 + m22
    dec = (m00, m11, m22, tr)
    choice, vmax = 0, m00
    for idx in (1, 2, 3):
        if dec[idx] > vmax:
            choice, vmax = idx, dec[idx]
    m = ((m00, m01, m02), (m10, m11, m12), (m20, m21, m22))
    q = [0.0, 0.0, 0.0, 0.0]
    if choice != 3:
        i = choice
        j = (i + 1) % 3
        k = (j + 1) % 3
        q[i] = 1 - tr + 2 * m[i][i]
        q[j] = m[j][i] + m[i][j]
        q[k] = m[k][i] + m[i][k]
        q[3] = m[k][j] - m[j][k]
    else:
        q[0] = m21 - m12
        q[1] = m02 - m20
        q[2] = m10 - m01
        q[3] = 1 + tr
    n = math.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    return np.array((q[0] / n, q[1] / n, q[2] / n, q[3] / n))


class _MatrixRotation:
    """What `Rotation.from_matrix(m)` returns, for the one method Meta-World calls on it."""

    __slots__ = ("_m",)

    def __init__(self, matrix):
        self._m = matrix

    def as_quat(self, canonical=False, *, scalar_first=False):
        m = self._m
        if (type(m) is _ndarray and m.shape == (3, 3) and m.dtype is _f64_dtype
                and not canonical and not scalar_first):
            (a, b, c), (d, e, f), (g, h, i) = m.tolist()
            # scipy first rejects det <= 0 and re-orthogonalises (SVD) any matrix whose Gramian
            # is not isclose(I, atol=1e-12); MuJoCo's xmat is orthogonal to ~1e-16. Take the fast
            # route only where scipy's checks certainly pass (margins 1000x the rounding of
            # either computation); anything else goes to scipy itself.
            gxy = a * d + b * e + c * f
            gxz = a * g + b * h + c * i
            gyz = d * g + e * h + f * i
            det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
            if (abs(gxy) < 1e-13 and abs(gxz) < 1e-13 and abs(gyz) < 1e-13 and det > 0.5
                    and abs(a * a + b * b + c * c - 1) < 1e-13
                    and abs(d * d + e * e + f * f - 1) < 1e-13
                    and abs(g * g + h * h + i * i - 1) < 1e-13):
                return _markley(a, b, c, d, e, f, g, h, i)
        return Rotation.from_matrix(m).as_quat(canonical=canonical, scalar_first=scalar_first)

    def __getattr__(self, name):  # any other use: the real Rotation
        return getattr(Rotation.from_matrix(self._m), name)


class FastRotation:
    """Stands in for `scipy.spatial.transform.Rotation` inside Meta-World's env modules."""

    from_matrix = staticmethod(_MatrixRotation)

    def __getattr__(self, name):
        return getattr(Rotation, name)


# -- namespaces handed to Meta-World's code as its `np`, `reward_utils` and `Rotation` ---------
def _module_copy(mod: types.ModuleType, **overrides) -> types.ModuleType:
    new = types.ModuleType(mod.__name__)
    new.__dict__.update(mod.__dict__)
    new.__dict__.update(overrides)
    return new


fast_np = _module_copy(np, linalg=_module_copy(np.linalg, norm=norm), hstack=hstack)
fast_reward_utils = _module_copy(reward_utils, tolerance=tolerance)
FAST_GLOBALS = {"np": (np, fast_np), "reward_utils": (reward_utils, fast_reward_utils),
                "Rotation": (Rotation, FastRotation())}
"""name in a Meta-World module -> (the object it must be, its fast stand-in)."""

__all__ = ["FAST_GLOBALS", "FastRotation", "fast_np", "fast_reward_utils", "hstack", "norm",
           "tolerance", "uclip"]
