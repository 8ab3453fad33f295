"""The optimizers (AdamW, or Muon for the block matrices + AdamW for the rest) and the lr schedule.

* :func:`param_groups`: weight decay on every parameter with ``dim >= 2`` (Linear weights and the
  token/position embeddings; the LM head is tied to ``wte`` and appears once), none on biases and
  LayerNorm gains (decaying those only pulls them towards 0 for no regularisation benefit, as in
  nanoGPT/llm.c). Order inside each group is ``named_parameters`` order, so the optimizer's state
  indices are stable across processes (exact resume) and :func:`param_names` maps them back.
* :func:`make_optimizer`: ``torch.optim.AdamW`` with ``fused=True`` on CUDA and CPU (one kernel
  for all parameters instead of a multi-tensor loop). Fused is also what lets the loop refuse a bad
  update on the device: the kernel skips the update, moments and step count when the optimizer's
  ``found_inf`` scalar is 1, so no host sync is needed to decide. CPU uses the same path, so the
  CPU tests exercise it.
* :func:`make_optimizers` (``--optimizer``): :class:`Optimizers`, stepped, scheduled and checkpointed
  as one. ``muon``: :class:`GuardedMuon` (``torch.optim.Muon``) on the four 2-D weights of every block
  (``c_attn``, ``attn.c_proj``, ``c_fc``, ``mlp.c_proj``); the fused AdamW keeps ``wte`` (= ``lm_head``),
  ``wpe``, the LayerNorms and the biases at ``--lr``. Parameters stay GPT-2's, so export is unchanged.
* :class:`GuardedMuon` is torch's Muon with the loop's device-side refusal: torch's Muon has no
  ``found_inf``, so its step is redone here with torch's own Newton-Schulz and lr adjustment, and a
  ``torch.where`` on the refusal flag keeps the momentum and the weights bit for bit (no host sync).
  ``--muon-split-qkv`` orthogonalises ``c_attn``'s Q, K and V blocks separately.
* :func:`lr_at`: a pure function of the step, so a resumed run sets exactly the lr an
  uninterrupted run would have: ``lr * (step + 1) / warmup`` for ``step < warmup``, then either cosine
  from ``lr`` to ``lr * min_lr_ratio`` at ``max_steps`` or (``--schedule wsd``) constant ``lr`` until the
  last ``--cooldown-frac`` of ``max_steps``, then linear to the floor; the floor holds past ``max_steps``.
  Every group follows the same multiplier (Muon's peak is ``--muon-lr``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.config import TrainConfig, require_muon

# the 2-D weights inside each block that Muon takes (names end so; everything else stays with AdamW)
MUON_SUFFIXES = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


def _split(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, p in model.named_parameters():  # named_parameters de-duplicates tied weights
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append((name, p))
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """``[{"params": 2-D weights, "weight_decay": wd}, {"params": the rest, "weight_decay": 0}]``."""
    decay, no_decay = _split(model)
    return [
        {"params": [p for _, p in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "weight_decay": 0.0},
    ]


def param_names(model: nn.Module) -> list[str]:
    """Parameter names in optimizer state-index order (index ``i`` of ``optimizer.state_dict()``)."""
    decay, no_decay = _split(model)
    return [n for n, _ in decay] + [n for n, _ in no_decay]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, fused (CUDA and CPU). The lr is set per step by the loop."""
    extra = {"fused": True} if device_type in ("cuda", "cpu") else {}
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=lr_at(0, cfg),
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        **extra,
    )


def cooldown_start(cfg: TrainConfig) -> int:
    """First step of WSD's linear decay: the last ``--cooldown-frac`` of ``--max-steps`` (after warmup)."""
    return max(cfg.warmup_steps, cfg.max_steps - round(cfg.cooldown_frac * cfg.max_steps))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """AdamW's learning rate of optimizer step ``step`` (0-based): warmup, cosine or WSD decay, floor."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps or cfg.max_steps <= cfg.warmup_steps:
        return floor
    if cfg.schedule == "wsd":
        start = cooldown_start(cfg)
        if step < start:
            return peak
        return peak - (step - start) / (cfg.max_steps - start) * (peak - floor)  # linear, floor at max_steps
    progress = (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps)  # in [0, 1)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# --------------------------------------------------------------------------- Muon


# torch < 2.9: the class below is never instantiated (make_optimizers calls require_muon first)
_MuonBase: Any = getattr(torch.optim, "Muon", torch.optim.Optimizer)


class GuardedMuon(_MuonBase):
    """``torch.optim.Muon`` whose step honours ``self.found_inf`` (a device scalar, 1 = refuse) as the
    fused AdamW does, and splits a group's matrices into ``group["split"]`` row blocks (``c_attn``'s Q,
    K and V) before orthogonalising.

    Same hyperparameters, state (``momentum_buffer``) and arithmetic as torch's step (a test checks
    bit-equality); the refusal is two ``torch.where`` per matrix on the device: the gradient is
    replaced by the momentum buffer (whose lerp to itself is exact), and the new weight by the old.
    """

    @torch.no_grad()
    def step(self, closure=None):
        from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        refuse = None if found_inf is None else found_inf.to(torch.bool)
        for group in self.param_groups:
            lr, wd, momentum, split = group["lr"], group["weight_decay"], group["momentum"], group["split"]
            ns = (group["ns_coefficients"], group["ns_steps"], group["eps"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                grad = p.grad if refuse is None else torch.where(refuse, buf, p.grad)
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                blocks = update.chunk(split, dim=0) if split > 1 else (update,)
                ortho = [_zeropower_via_newtonschulz(b, *ns) for b in blocks]
                update = torch.cat(ortho, dim=0) if split > 1 else ortho[0]
                adjusted_lr = _adjust_lr(lr, group["adjust_lr_fn"], blocks[0].shape)
                new = p.mul(1 - lr * wd) if refuse is not None else p.mul_(1 - lr * wd)
                new.add_(update, alpha=-adjusted_lr)
                if refuse is not None:
                    p.copy_(torch.where(refuse, p, new))
        return loss


def _named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # tied weights once


def is_muon_param(name: str, p: torch.Tensor) -> bool:
    """The 2-D weights inside the blocks; embeddings, LayerNorms and biases stay with AdamW."""
    return p.dim() == 2 and name.endswith(MUON_SUFFIXES) and ".h." in f".{name}"


class Optimizers:
    """The run's optimizers as one: AdamW alone, or AdamW + Muon (``--optimizer muon``).

    The loop sets one lr per step (:meth:`set_lr`, AdamW's; Muon's follows the same multiplier), one
    refusal flag (:meth:`guard`), and steps them together. :meth:`state_dict` is the checkpoint's part:
    ``optimizer`` (AdamW's state dict, as before) and ``muon`` (only under muon), each naming its
    parameters (``param_names`` in every group), which :meth:`load_state_dict` checks.
    """

    def __init__(self, cfg: TrainConfig, adamw: torch.optim.Optimizer, muon: GuardedMuon | None = None):
        self.kind = cfg.optimizer
        self.adamw, self.muon = adamw, muon
        self.muon_ratio = cfg.muon_lr / cfg.lr  # Muon's lr = AdamW's lr of the step x this

    @property
    def all(self) -> list[torch.optim.Optimizer]:
        return [self.adamw] + ([self.muon] if self.muon is not None else [])

    def set_lr(self, lr: float) -> None:
        set_lr(self.adamw, lr)
        if self.muon is not None:
            set_lr(self.muon, lr * self.muon_ratio)

    def guard(self, found_inf: torch.Tensor) -> None:
        """Every optimizer refuses its update on the device while ``found_inf`` is 1."""
        for opt in self.all:
            # an attribute torch's Optimizer does not declare: the fused AdamW's step reads it (as
            # torch's own GradScaler sets it), GuardedMuon.step reads it too
            opt.found_inf = found_inf  # type: ignore[attr-defined]

    def step(self) -> None:
        for opt in self.all:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.all:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        out = {"optimizer": self.adamw.state_dict()}
        if self.muon is not None:
            out["muon"] = self.muon.state_dict()
        return out

    def load_state_dict(self, payload: dict[str, Any], path: Path) -> None:
        """Restore from a checkpoint payload; refuses one of the other ``--optimizer`` in one line."""
        from trainer.checkpoint import ResumeError

        saved = "muon" if "muon" in payload else "adamw"
        if saved != self.kind:
            raise ResumeError(
                f"{path}: the run was trained with --optimizer {saved} and this resume asks for --optimizer "
                f"{self.kind}; resume with --optimizer {saved}, or start a new run from its weights with "
                f"--init-from {path} --optimizer {self.kind}"
            )
        for key, opt in (("optimizer", self.adamw), ("muon", self.muon)):
            if opt is None:
                continue
            now = [g.get("param_names") for g in opt.state_dict()["param_groups"]]
            then = [g.get("param_names") for g in payload[key]["param_groups"]]
            if all(t is not None for t in then) and then != now:  # older checkpoints carry no names
                raise ResumeError(
                    f"{path}: the {key} state is for parameters {then}, this model's are {now}; "
                    "resume with the code and settings the run was started with"
                )
            opt.load_state_dict(payload[key])


def make_optimizers(model: nn.Module, cfg: TrainConfig, device_type: str) -> Optimizers:
    """``--optimizer adamw``: :func:`make_optimizer` over every parameter. ``muon``: Muon on the blocks'
    2-D weights (``c_attn`` in its own group, split in 3 under ``--muon-split-qkv``), fused AdamW on the
    rest with the usual decay split. Every group names its parameters (for the checkpoint)."""
    named = _named(model)
    if cfg.optimizer == "adamw":
        decay = [(n, p) for n, p in named if p.dim() >= 2]
        rest = [(n, p) for n, p in named if p.dim() < 2]
        return Optimizers(cfg, _adamw(decay, rest, cfg, device_type))
    require_muon()
    matrices = [(n, p) for n, p in named if is_muon_param(n, p)]
    others = [(n, p) for n, p in named if not is_muon_param(n, p)]
    qkv = [(n, p) for n, p in matrices if n.endswith(".c_attn.weight")]
    rest_m = [(n, p) for n, p in matrices if not n.endswith(".c_attn.weight")]
    muon = GuardedMuon(
        [g for g in ({"params": qkv, "split": 3 if cfg.muon_split_qkv else 1},
                     {"params": rest_m, "split": 1}) if g["params"]],
        lr=cfg.muon_lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.muon_momentum,
        nesterov=True,
        adjust_lr_fn="match_rms_adamw",  # update RMS like AdamW's, so --muon-lr lives on AdamW's scale
    )  # fmt: skip
    decay = [(n, p) for n, p in others if p.dim() >= 2]  # wte (= lm_head) and wpe
    rest = [(n, p) for n, p in others if p.dim() < 2]
    return Optimizers(cfg, _adamw(decay, rest, cfg, device_type), muon)


def _adamw(decay, no_decay, cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    extra = {"fused": True} if device_type in ("cuda", "cpu") else {}
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=lr_at(0, cfg),
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        **extra,
    )
