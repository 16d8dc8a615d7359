"""The search space, written in Hydra's sweep syntax and read as Optuna distributions.

The same strings as ``hydra-optuna-sweeper``'s ``params``, so its configs carry over:

====================================  ======================================
``interval(1e-4, 1e-2)``              float, uniform
``tag(log, interval(1e-4, 1e-2))``    float, log-uniform
``int(interval(16, 128))``            int (``tag(log, ...)`` for log-uniform)
``range(32, 129, 32)``                int or float on a grid (stop excluded, as in Hydra)
``choice(adamw, sgd)`` or ``a,b``     categorical
a plain value                         fixed, not searched
====================================  ======================================
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from gtsrb.errors import UserError


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override (``key=interval(...)``, ``key=a,b`` ...)."""
    value = override.value()
    if isinstance(value, Glob):
        raise UserError(f"{override.input_line}: the Optuna sweeper does not know this kind of sweep (a glob); "
                        "use interval(...), tag(log, interval(...)), int(interval(...)), range(...) or choice(...)")
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        values = list(override.sweep_iterator())
        if not values:
            raise UserError(f"{override.input_line} is an empty range; the stop is excluded, as in Python's range")
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=int(value.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if override.is_interval_sweep():
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise UserError(f"{override.input_line}: the Optuna sweeper does not know this kind of sweep; "
                    "use interval(...), tag(log, interval(...)), int(interval(...)), range(...) or choice(...)")


def parse(params: dict[str, Any] | None, arguments: list[str]) -> tuple[list[str], dict[str, BaseDistribution]]:
    """Split ``hydra.sweeper.params`` and the command line into fixed overrides and the searched distributions.

    The command line wins over ``params`` for the same key, so ``optimizer.lr=1e-3`` fixes a searched value.
    """
    lines = {key: f"{key}={value}" for key, value in (params or {}).items()}
    parser = OverridesParser.create()
    for override in parser.parse_overrides(arguments):
        lines[override.get_key_element()] = override.input_line
    fixed, space = [], {}
    for line in lines.values():
        try:
            override = parser.parse_override(line)
        except Exception as exc:
            raise UserError(f"cannot parse the search space entry {line}: {exc}") from exc
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(line)
    return fixed, space


def as_override(key: str, value: Any) -> str:
    """``key=value`` for a sampled value, quoted where Hydra's grammar would read it otherwise."""
    if isinstance(value, str) and not value.replace("_", "").replace("-", "").replace(".", "").isalnum():
        value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    elif value is None:
        value = "null"
    return f"{key}={value}"
