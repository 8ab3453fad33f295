"""Which fused attention kernel ``F.scaled_dot_product_attention`` runs: chosen on purpose, and said.

* Names: ``auto``, ``cudnn``, ``flash``, ``efficient`` (memory-efficient), ``math`` (the reference
  composite), mapped to :class:`torch.nn.attention.SDPBackend`. Left alone, torch picks per call by
  its own priority list, and the run cannot say which kernel it trained with.
* :func:`preferred_backends` is the preference for a CUDA compute capability: cuDNN attention first
  on Hopper and newer (sm 9.x+, where it is the fastest causal kernel torch ships), then flash, then
  memory-efficient; flash first on Ampere/Ada (sm 8.x); memory-efficient first before that (flash
  needs sm 8.0).
* :func:`choose_sdpa_backend` turns ``--sdpa-backend`` into the name of one kernel that *works* for
  this run's shapes and dtype: each candidate is tried once on a (1, n_head, T, head_dim) forward and
  backward (a few milliseconds at start-up); the first that runs is chosen. ``auto`` on CPU returns
  ``default`` (torch's CPU choice, nothing forced); an explicit name that cannot run is a ValueError
  naming the flag.
* :func:`sdpa_context` is the context manager that restricts SDPA to the chosen kernel (``default``
  allows them all, as torch does out of the box). The trainer enters it around its forward/backward
  and eval passes, including their ``torch.compile`` tracing, and logs the name; generation is left on
  torch's choice (its masked cached attention needs a kernel that takes a mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS: dict[str, SDPBackend] = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
CHOICES = ("auto", *BACKENDS)


def preferred_backends(capability: tuple[int, int]) -> list[str]:
    """Kernels to try, best first, on a CUDA device of compute capability ``(major, minor)``."""
    major = capability[0]
    if major >= 9:  # Hopper, Blackwell: cuDNN's fused attention beats flash-2 there
        return ["cudnn", "flash", "efficient"]
    if major == 8:  # Ampere, Ada
        return ["flash", "efficient", "cudnn"]
    return ["efficient"]  # Volta/Turing: no flash kernel in torch


def sdpa_context(name: str):
    """A context manager under which SDPA uses only kernel ``name``; ``default`` re-allows every kernel
    (torch's own choice, also inside a restricted region, e.g. for generation)."""
    if name == "default":
        return sdpa_kernel(list(BACKENDS.values()))
    return sdpa_kernel([BACKENDS[name]])


def _runs(
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    n_head: int,
    head_dim: int,
    seq_len: int,
    dropout: float,
) -> bool:
    """Whether kernel ``name`` runs forward and backward on this run's attention shape."""
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(1, n_head, seq_len, head_dim, device=device, dtype=dtype, generator=g, requires_grad=True)
        for _ in range(3)
    )  # (1, nh, T, hs)
    try:
        with sdpa_context(name):
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
            y.sum().backward()
    except RuntimeError:  # "No available kernel", or the kernel rejects this dtype/shape/device
        return False
    return True


def choose_sdpa_backend(
    choice: str,
    device: torch.device,
    dtype: torch.dtype,
    n_head: int,
    head_dim: int,
    seq_len: int,
    dropout: float = 0.0,
) -> str:
    """The kernel this run uses: ``default`` or one of :data:`BACKENDS` (see the module docstring)."""
    if choice not in CHOICES:
        raise ValueError(f"--sdpa-backend {choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "auto":
        if device.type != "cuda":
            return "default"
        candidates = [*preferred_backends(torch.cuda.get_device_capability(device)), "math"]
    else:
        candidates = [choice]
    for name in candidates:
        if _runs(name, device, dtype, n_head, head_dim, seq_len, dropout):
            return name
    raise ValueError(
        f"--sdpa-backend {choice}: this kernel cannot run attention of {n_head} heads x {head_dim} dims, "
        f"T={seq_len}, {dtype} on {device} here; pass --sdpa-backend auto to use one that can"
    )
