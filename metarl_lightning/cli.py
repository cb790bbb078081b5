"""One-line errors for command-line mistakes that Hydra reports as multi-line tracebacks.

Before handing over to `@hydra.main`, the overrides are composed once with Hydra's compose API;
a failure is turned into `error: ...` naming the fix, and the process exits with status 2.
Multirun (`-m`) invocations are left to Hydra: sweep syntax does not compose as one config.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _describe(err: BaseException, overrides: list[str]) -> str:
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, MissingConfigException) and e.options:
            group, _, bad = (e.missing_cfg_file or "").rpartition("/")
            group = group or "config group"
            options = sorted(o for o in e.options if not o.endswith("_schema"))
            plugins = (" (Hydra plugins: pip install -e \".[sweep]\" for the optuna sweeper and "
                       "joblib launcher, \".[slurm]\" for submitit)"
                       if group.startswith("hydra/") else "")
            return (f"unknown {group} {bad!r}; choose one of: {', '.join(options)} "
                    f"(e.g. {group}={options[0]}){plugins}")
    # Hydra's own hint for a key that is not in the config: "To append ... use +key=value"
    plus = next((m.group(1) for e in chain
                 if (m := re.search(r"use (\+\S+)", str(e)))), None)
    for e in chain:
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            key = e.full_key
            if isinstance(e, ConfigKeyError) or "not in" in str(e):
                parent, _, name = key.rpartition(".")
                script = Path(sys.argv[0]).name or "train.py"
                if parent in ("logger", "callbacks") and (CONF_DIR / parent / f"{name}.yaml").exists():
                    return (f"{key} is not part of the chosen {parent} group; select it with "
                            f"{parent}={name}" + (" (or logger=many)" if parent == "logger" else ""))
                return (f"unknown config key {key!r}; check the spelling"
                        + (f" against the keys of {parent!r} (python {script} --cfg job)"
                           if parent else "")
                        + (f", or add a new key with {plus}" if plus else ""))
            msg = str(e).splitlines()[0]
            return f"bad value for {key}: {msg}; pass a value of the declared type"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"{first} (overrides: {' '.join(overrides)})"


def check_overrides(config_name: str, argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-m", "--multirun") or a.startswith("-") for a in args):
        return  # flags (multirun, --cfg, --help...) are Hydra's business
    overrides = [a for a in args if not a.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides)
            missing = [k for k in cfg if OmegaConf.is_missing(cfg, k)]
            if missing:
                raise _Missing(missing[0])
    except _Missing as err:
        print(f"error: {err.key} is required; pass {err.key}=...", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001  (any composition failure is a user error here)
        print(f"error: {_describe(err, overrides)}", file=sys.stderr)
        sys.exit(2)
    finally:
        GlobalHydra.instance().clear()


class _Missing(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key
