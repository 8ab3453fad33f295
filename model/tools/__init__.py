"""The offline face of ``model/``: ``python -m model``'s commands (:mod:`model.tools.cli`; the settings of
``sample`` and ``eval`` in :mod:`model.tools.cli_config`) and the zero-shot eval harness
(:mod:`model.tools.evaluate`, task definitions in :mod:`model.tools.eval_tasks`).

The network and its weights I/O stay at ``model/``'s top level, which imports nothing from here; the
trainer imports the harness only for ``--eval-tasks``. Layout: README.md, "Design".
"""
