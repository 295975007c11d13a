"""Evaluation: scores (:mod:`.scores`), the cine validation (:mod:`.cine`), a site's own data
(:mod:`.site`) and the ``streamrecon evaluate`` command (:mod:`.cli`).

The commands read a site's files through the simulator's readers (imported inside the
functions that need them): the data formats have one home, :mod:`simulator.readers`.
"""
