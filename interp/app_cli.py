"""``interp app``: start the Streamlit app (``apps/app.py``, the package ``interp.apps``) on 127.0.0.1.

    interp app [--model NAME] [--port 8501] [--address 127.0.0.1] [--roots DIR:DIR] [--max-tokens N]
               [--map-budget-mb MB] [--dry-run]

``--model`` takes anything ``interp.load`` accepts (default: the embedded ``tokfsm-mamba``, or the first
installed embedded model). ``--roots`` lists the folders the app may read models and SAEs from (default
``./runs`` and ``./models``). The server runs headless with usage statistics off (no network use).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

APP = Path(importlib.util.find_spec("interp.apps").origin).parent / "app.py"  # apps/ is the package interp.apps


def command(a: argparse.Namespace) -> list[str]:
    """The ``streamlit run`` command line for parsed options ``a``."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP),
           "--server.headless", "true", "--server.address", a.address, "--server.port", str(a.port),
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--global.developmentMode", "false", "--client.toolbarMode", "minimal", "--"]
    for flag, val in (("--model", a.model), ("--roots", a.roots), ("--max-tokens", a.max_tokens),
                      ("--map-budget-mb", a.map_budget_mb)):
        if val is not None:
            cmd += [flag, str(val)]
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="interp app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="embedded name, model folder or hub id (default tokfsm-mamba)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="127.0.0.1", help="interface to serve on (default 127.0.0.1)")
    p.add_argument("--roots", default=None, help=f"folders the app may read, separated by {os.pathsep!r}")
    p.add_argument("--max-tokens", type=int, default=None, help="prompt cap in tokens (default 2048)")
    p.add_argument("--map-budget-mb", type=float, default=None, help="memory budget of one map (default 2048)")
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
