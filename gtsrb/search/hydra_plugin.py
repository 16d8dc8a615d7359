"""Hydra finds sweepers only in the ``hydra_plugins`` namespace package.

The wheel installs this file as ``hydra_plugins/gtsrb_search/__init__.py``
(``force-include`` in ``pyproject.toml``); the sweeper itself lives in
:mod:`gtsrb.search.sweeper`. Hydra registers plugin classes under their
``__module__``, so the class is subclassed here, not re-exported.
"""

from gtsrb.search import sweeper as _sweeper


class OptunaSweeper(_sweeper.OptunaSweeper):
    """``hydra/sweeper=optuna``: see :class:`gtsrb.search.sweeper.OptunaSweeper`."""
