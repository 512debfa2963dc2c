"""``interp app``: start the Streamlit app (``apps/app.py``, the package ``interp.apps``) on 127.0.0.1.

    interp app [--model NAME] [--port 8501] [--address 127.0.0.1] [--roots DIR:DIR] [--max-tokens N]
               [--map-budget-mb MB] [--pool-above N] [--dry-run]

``--model`` takes anything ``interp.load`` accepts (default: the embedded ``tokfsm-mamba``, or the first
installed embedded model). ``--roots`` lists the folders the app may read models and SAEs from (default
``./runs`` and ``./models``). The server runs headless with usage statistics off (no network use).

The app's settings are defined once, here (:data:`OPTIONS`, :class:`AppConfig`): this command passes them on the
``streamlit run`` command line, and the app reads them back with :func:`parse_config` (command line over the
``INTERP_APP_*`` environment variables over the defaults).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

APP = Path(importlib.util.find_spec("interp.apps").origin).parent / "app.py"  # apps/ is the package interp.apps

#: the app's settings: (flag, type, environment variable, default, help)
OPTIONS = (
    ("--model", str, "INTERP_APP_MODEL", None, "embedded name, model folder or hub id (default tokfsm-mamba)"),
    ("--roots", str, "INTERP_APP_ROOTS", None, f"folders the app may read, separated by {os.pathsep!r}"),
    ("--max-tokens", int, "INTERP_APP_MAX_TOKENS", 2048, "prompt cap in tokens (default 2048)"),
    ("--map-budget-mb", float, "INTERP_APP_MAP_BUDGET_MB", 2048.0, "memory budget of one map (default 2048)"),
    ("--pool-above", int, "INTERP_APP_POOL_ABOVE", 256, "prompts longer than this get a pooled overview (256)"),
)


@dataclass
class AppConfig:
    """The app's settings. ``roots``: folders the app may read models / SAEs from (resolved); ``max_tokens``: prompt
    cap; ``map_budget_bytes``: memory budget of one interaction map; ``pool_above``: prompts longer than this get a
    pooled overview; ``thumb_tokens``: for those, thumbnails use this many leading tokens (exact for causal maps:
    the top-left block of the full map); ``lrp_full_max``: longer prompts get only some LRP rows."""

    model: str | None = None
    roots: list[Path] = field(default_factory=list)
    max_tokens: int = 2048
    map_budget_bytes: int = 2 * 2**30
    pool_above: int = 256
    thumb_tokens: int = 128
    lrp_full_max: int = 48


def add_options(p: argparse.ArgumentParser) -> None:
    """The :data:`OPTIONS` flags on ``p``, each defaulting to None (not given)."""
    for flag, kind, _, _, text in OPTIONS:
        p.add_argument(flag, type=kind, default=None, help=text)


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> AppConfig:
    """Settings from ``argv`` over the environment ``env`` (default ``os.environ``) over the defaults. Unknown
    arguments are ignored (Streamlit and pytest put their own in ``sys.argv``)."""
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(add_help=False)
    add_options(p)
    a, _ = p.parse_known_args(list(argv or []))
    got = {}
    for flag, kind, var, default, _ in OPTIONS:
        given = getattr(a, flag[2:].replace("-", "_"))
        got[flag] = given if given is not None else kind(env[var]) if env.get(var) else default
    roots = [Path(r) for r in got["--roots"].split(os.pathsep)] if got["--roots"] else \
        [Path.cwd() / "runs", Path.cwd() / "models"]
    return AppConfig(model=got["--model"] or None, roots=[r.expanduser().resolve() for r in roots],
                     max_tokens=max(1, got["--max-tokens"]), map_budget_bytes=int(got["--map-budget-mb"] * 2**20),
                     pool_above=max(16, got["--pool-above"]))


def command(a: argparse.Namespace) -> list[str]:
    """The ``streamlit run`` command line for parsed options ``a``."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP),
           "--server.headless", "true", "--server.address", a.address, "--server.port", str(a.port),
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--global.developmentMode", "false", "--client.toolbarMode", "minimal", "--"]
    for flag, *_ in OPTIONS:
        if (val := getattr(a, flag[2:].replace("-", "_"), None)) is not None:  # a flag not set: not passed
            cmd += [flag, str(val)]
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="interp app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p)
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1", help="interface to serve on (default 127.0.0.1)")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    a = p.parse_args(argv)
    if not APP.is_file():
        print(f"interp app: {APP} not found; reinstall the toolkit (pip install -e '.[app]').", file=sys.stderr)
        return 2
    cmd = command(a)
    if a.dry_run:
        print(" ".join(cmd))
        return 0
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
