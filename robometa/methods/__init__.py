"""Method families, one module each: what ``robometa train`` runs for a registered algorithm.

* :mod:`robometa.methods.dqn`: Double DQN over the task distribution (domain randomization)
  and the privileged oracle;
* :mod:`robometa.methods.gradient`: the gradient meta-learners (MAML, FO-MAML, Meta-SGD, ANIL,
  CAVIA, Reptile).

:mod:`robometa.methods.base` holds the trainer interface every family implements and the
defaults a family overrides only where it differs (its network, its bundle). Which name runs
which class is :mod:`robometa.algorithms`' table.
"""
