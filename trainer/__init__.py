"""owtgpt trainer: ``python -m trainer`` (see :mod:`trainer.train` for the loop's contract).

Modules: :mod:`trainer.config` (TrainConfig, presets, TOML, CLI), :mod:`trainer.optim` (AdamW groups,
lr schedule), :mod:`trainer.checkpoint` (atomic training checkpoints, resume), :mod:`trainer.dist`
(torchrun/DDP, device, precision), :mod:`trainer.observe` (display, TensorBoard, MFU, profiler),
:mod:`trainer.rundir` (run folder policy, config.json), :mod:`trainer.train` (the loop),
:mod:`trainer.step` (one optimizer step).
Importing the package imports nothing heavy.
"""
