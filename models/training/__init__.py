"""Training: the ``streamrecon train`` command (:mod:`models.training.cli`).

The training loop, losses and samplers it drives live in :mod:`models.train`,
:mod:`models.training_data` and :mod:`models.cine_windows`.
"""
