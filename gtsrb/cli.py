"""Command-line plumbing shared by ``train.py`` and ``evaluate.py``.

Hydra reports a bad override with a multi-line message and a hint about
``HYDRA_FULL_ERROR``. Before handing over to Hydra, :func:`preflight` checks
the overrides itself (group options exist, values have the right type and
range) and reports the first problem in one line. Inside the app,
:func:`report_user_errors` does the same for :class:`UserError`.
"""

from __future__ import annotations

import functools
import itertools
import shutil
import sys
from pathlib import Path

from hydra import compose, initialize, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gtsrb.config import register_configs, validate
from gtsrb.errors import UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
_SWEEP_FLAGS = {"-m", "--multirun"}


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def _one_line(exc: BaseException) -> str:
    """The most specific message in an exception chain, folded to one line. A key new to an open mapping (``trainer``,
    ``augmentation.cooldown``) keeps Hydra's fix (``+key=value``) from its outer message, which is right for a new
    key (a misspelt one is then named by whatever reads the mapping). A key missing from a typed schema gets no such
    hint: the schema refuses ``+`` as well, so the fix is the right name."""
    hint = next((line.strip() for line in str(exc).splitlines() if line.strip().startswith("To append")), "")
    while exc.__cause__ is not None and isinstance(exc.__cause__, Exception):
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    message = lines[0] if lines else type(exc).__name__
    key = getattr(exc, "full_key", None)
    if isinstance(exc, OmegaConfBaseException) and key:
        message = f"{key}: {message}"
    return f"{message}; {hint[0].lower()}{hint[1:]}" if hint and "not in struct" in message else message


MAX_SWEEP_CHECKS = 256  # sweeps with more combinations are checked one swept value at a time


def preflight(args: list[str], config_name: str, conf_dir: Path = CONF_DIR) -> None:
    """Raise a one-line :class:`UserError` for the first override that cannot work.

    A sweep (``model=a,b data.image_size=32,4``) is checked before its first
    job starts: group options value by value, then every combination of the
    swept values is composed and validated (for sweeps of more than
    :data:`MAX_SWEEP_CHECKS` combinations, every swept value with the first
    value of the other sweeps), and the first that cannot work is named. A
    launcher chosen here (``-m hydra/launcher=slurm``) must be able to start
    (:func:`_check_launcher`).
    """
    if any(a.startswith("-") and a not in _SWEEP_FLAGS for a in args):
        return  # --help, --cfg, --info ...: Hydra's own business
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if a not in _SWEEP_FLAGS])
    except Exception as exc:
        raise UserError(f"cannot parse the overrides: {_one_line(exc)}") from exc
    fixed, swept, groups = [], [], []
    for override in overrides:
        if override.is_sweep_override() and not override.is_discrete_sweep():
            continue  # interval(...): a search space, checked by the search's sweeper (gtsrb.search.sweeper)
        key = override.key_or_group
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [
            override.get_value_element_as_str() if override.value() is not None else None]
        if config_name == "train" and (conf_dir / key).is_dir() and not override.is_delete():  # a config group
            groups.append((key, values))
        if override.is_sweep_override():
            swept.append([f"{override.get_key_element()}={value}" for value in values])
        else:
            fixed.append(override.input_line)
    register_configs()
    # the serving app's config lives in the ConfigStore (see gtsrb.config.register_serve_config)
    context = initialize(version_base="1.3", config_path=None) if config_name == "serve" else \
        initialize_config_dir(str(conf_dir), version_base="1.3")
    with context:
        for key, values in groups:
            options = _hydra_group_options(key) if key.startswith("hydra/") else group_options(key, conf_dir)
            for value in values:
                if value is not None and value not in options:
                    raise UserError(f"unknown {key} '{value}'; choose one of: {', '.join(options)}")
        if config_name == "train":
            _check_launcher(overrides, sweeping=any(a in _SWEEP_FLAGS for a in args),
                            job=[*fixed, *_sweep_jobs(swept)[0]])
        for job in _sweep_jobs(swept):
            try:
                try:
                    cfg = compose(config_name, overrides=[*fixed, *job])
                except Exception as exc:
                    raise UserError(f"bad override: {_one_line(exc)}") from exc
                _check(config_name, cfg)
            except UserError as exc:
                if len(swept) == 0:
                    raise
                raise UserError(f"the sweep job with {' '.join(job)} cannot run: {exc}") from exc


def _hydra_group_options(group: str) -> list[str]:
    """Options of one of Hydra's own groups: ``conf/hydra/<group>/`` and what Hydra and its plugins register
    (``hydra/launcher=submitit_slurm`` is hydra-submitit-launcher's, ``hydra/launcher=slurm`` ours)."""
    from hydra.core.global_hydra import GlobalHydra

    return GlobalHydra.instance().config_loader().get_group_options(group)


def _check_launcher(overrides, sweeping: bool, job: list[str]) -> None:
    """A launcher chosen on the command line must be able to start: without ``-m`` Hydra would quietly train here
    instead, and submitit on a machine without SLURM fails with a traceback after the sweep directory exists."""
    chosen = [o for o in overrides if o.key_or_group.replace(".", "/").startswith("hydra/launcher")]
    if not chosen:
        return
    if not sweeping:
        raise UserError(f"{chosen[0].input_line} applies to sweeps only; "
                        "add -m to launch this run as a sweep of one job")
    try:
        cfg = compose("train", overrides=job, return_hydra_config=True)
    except Exception as exc:
        raise UserError(f"bad override: {_one_line(exc)}") from exc
    name = cfg.hydra.runtime.choices.get("hydra/launcher")
    if str(cfg.hydra.launcher.get("_target_", "")).endswith(".SlurmLauncher"):
        missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
        if missing:
            raise UserError(f"hydra/launcher={name} submits jobs with SLURM's {' and '.join(missing)}, not found on "
                            "PATH; run the sweep on the cluster's login node, or hydra/launcher=local on this machine")
        devices = cfg.trainer.get("devices")
        if not isinstance(devices, int) or isinstance(devices, bool):
            raise UserError(f"hydra/launcher={name} starts one task per device: set trainer.devices to the number "
                            f"of GPUs per node (an integer), not {devices!r}")
    try:
        OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    except Exception as exc:
        raise UserError(f"bad hydra/launcher setting: {_one_line(exc)}") from exc


def _sweep_jobs(swept: list[list[str]]) -> list[list[str]]:
    """The swept values of every job of a grid sweep (one empty job without a sweep), or, past
    :data:`MAX_SWEEP_CHECKS` jobs, each swept value once with the first value of the others."""
    jobs = [list(job) for job in itertools.product(*swept)]
    if len(jobs) <= MAX_SWEEP_CHECKS:
        return jobs
    firsts = [values[0] for values in swept]
    return [[*firsts[:i], value, *firsts[i + 1:]] for i, values in enumerate(swept) for value in values]


def _check(config_name: str, cfg) -> None:
    """What each command needs before it starts, beyond a config that composes."""
    if config_name == "train":
        validate(cfg)
    if config_name == "serve":  # the model must be there before any process starts
        _check_model(cfg)
    if config_name in ("evaluate", "export"):  # the checkpoint must be there before anything starts
        from gtsrb.checkpoint import resolve_checkpoint

        if OmegaConf.is_missing(cfg, "ckpt_path"):
            raise UserError("no checkpoint given; pass ckpt_path=<training run directory> or ckpt_path=<file>.ckpt")
        resolve_checkpoint(cfg.ckpt_path)


def _check_model(cfg) -> None:
    from gtsrb.checkpoint import resolve_checkpoint

    if OmegaConf.is_missing(cfg, "model"):
        raise UserError("no model given; pass model=<run directory>, model=<file>.ckpt or model=<file>.onnx")
    if str(cfg.model).endswith(".onnx"):
        if not Path(cfg.model).expanduser().is_file():
            raise UserError(f"ONNX model {cfg.model} does not exist; export one with "
                            "uv run python -m gtsrb.export ckpt_path=<run>")
    else:
        resolve_checkpoint(cfg.model)


def report_user_errors(task):
    """Turn a :class:`UserError` inside a Hydra task into one ``error:`` line and exit status 2."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except UserError as exc:
            fail(str(exc))

    return wrapper


def start(app, config_name: str, register=register_configs) -> None:
    """How every command starts: register its config schema, check the command line (a mistake ends in one
    ``error:`` line and exit status 2, before any heavy import or output directory), then run the Hydra ``app``."""
    register()
    try:
        preflight(sys.argv[1:], config_name)
    except UserError as exc:
        fail(str(exc))
    app()
