"""Mixed precision as autocast only: trained weights stay float32 (master weights).

``compute.mixed_precision`` (``no``, ``bf16``, ``fp16``) names the dtype of the matrix
multiplications inside forward passes; it never changes the dtype of a trained parameter,
because AdamW applied to bf16 weights rounds most small updates away (at lr 1e-5 one step
changed 15.6% of a bf16 model's weights, and 100% in float32). On the CPU only bf16 autocast
exists: fp16 runs in float32 there (as accelerate does).
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("no", "bf16", "fp16")


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `mixed_precision` on `device`, or None for plain float32."""
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"mixed precision must be one of {PRECISIONS}, not {mixed_precision!r}")
    if mixed_precision == "bf16":
        return torch.bfloat16
    if mixed_precision == "fp16" and device.type == "cuda":
        return torch.float16
    return None


def autocast(mixed_precision: str, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """``torch.autocast`` in the run's precision on `device`, or a no-op in float32."""
    dtype = autocast_dtype(mixed_precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
