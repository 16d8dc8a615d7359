"""Hyperparameter search with Optuna: ``uv run train.py -m hparams_search=optuna experiment=quickstart``.

* :mod:`~gtsrb.search.space`: Hydra sweep strings (``interval``, ``choice``...) as Optuna distributions
* :mod:`~gtsrb.search.sweeper`: the Hydra sweeper (ask, launch, tell, report)
* :mod:`~gtsrb.search.pruning`: the trial's side: report each epoch, stop when pruned
* :mod:`~gtsrb.search.plots`: Optuna's plots of the finished study
* :mod:`~gtsrb.search.hydra_plugin`: the entry Hydra discovers (installed into ``hydra_plugins``)
"""
