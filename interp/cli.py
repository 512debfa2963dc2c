"""The ``interp`` command: one entry point for the toolkit's jobs.

    interp demo [--model NAME] [--out DIR]          the main job on the embedded model, HTML report
    interp train NAME [--install] [--set k=v ...]   train an embedded model (resumable)
    interp evaluate NAME [--path DIR]               transition / copy accuracy of an embedded model
    interp attention copying|perturbation ...       evaluation harness of the interaction maps
    interp cache --model M --hook H --out DIR ...   cache hook activations to disk (resumable)
    interp train-sae --config C --store DIR --out O train an SAE (resumable; data-parallel under torchrun)
    interp app [--model NAME]                      the Streamlit app (token interactions, features, steering)

Each subcommand is the ``main(argv)`` of its module (``python -m <module>`` works the same way, and so does
``python -m interp SUBCOMMAND``); ``interp SUBCOMMAND --help`` shows its options.

A mistake of the user (an unknown model or hook name, an output folder that holds another run, a missing
checkpoint) ends as one line on stderr, ``interp SUBCOMMAND: <message>``, and exit status 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

# subcommand -> (module whose main(argv) runs it, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("interp.demo", "run the main job on the embedded default model and write an HTML report"),
    "train": ("interp.zoo.train", "train an embedded model from its recipe (checkpoints, resume)"),
    "evaluate": ("interp.zoo.evaluate", "evaluate an embedded model (transition or copy accuracy)"),
    "attention": ("interp.attention.cli", "copying benchmark and perturbation curves of interaction maps"),
    "cache": ("interp.activations.cli", "cache hook activations of a model over a token stream to disk shards"),
    "train-sae": ("interp.sae.cli", "train a sparse autoencoder from a config (cached or streamed; torchrun DDP)"),
    "app": ("interp.app_cli", "start the Streamlit app on 127.0.0.1 (interp app [--model NAME])"),
}


# the exception types that report a user's mistake, as (module, class name): only a module that was imported can
# have raised one, so recognising them imports nothing
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("interp.hooks.loading", "UnknownModelError"),    # unknown model name (suggests the close ones)
    ("interp.hooks.loading", "CheckpointError"),      # missing / corrupt model folder
    ("interp.hooks.loading", "ExistingRunError"),     # the output folder holds another run
    ("interp.hooks.hook_points", "UnknownHookError"),  # unknown hook name (suggests the close ones)
    ("interp.activations.manifest", "ManifestError"),  # not an activation cache, or another run's
    ("interp.io", "FileError"),                         # a missing / damaged file, a checksum mismatch
    ("interp.locks", "FolderLockedError"),              # another job writes the output folder
)

# the keyword arguments that library messages name -> the flags that set them on the command line
FLAGS: dict[str, str] = {"overwrite=True": "--overwrite", "resume=False": "--no-resume", "out": "--out DIR",
                         "out_dir": "--out DIR"}


def _loaded_class(module: str, name: str) -> type | None:
    """Class ``name`` of ``module`` if that module was imported, else None."""
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` reports a mistake of the user (:data:`USER_ERRORS`) rather than a bug."""
    return any(isinstance(error, cls) for cls in (_loaded_class(*spec) for spec in USER_ERRORS) if cls is not None)


def error_line(error: BaseException) -> str:
    """The message of a user error on one line, with the keyword arguments it names as command-line flags."""
    existing_run = _loaded_class("interp.hooks.loading", "ExistingRunError")
    if existing_run is not None and isinstance(error, existing_run):
        return error.describe(FLAGS, one_line=True)
    return " ".join(str(error).split())


def run(prog: str, main: Callable[[list[str]], Any], argv: list[str]) -> int:
    """Run a subcommand's ``main(argv)``: its exit status (0 unless it returns an int); a user error prints
    ``PROG: <message>`` on one line to stderr and returns 2."""
    try:
        result = main(argv)
    except Exception as e:
        if not is_user_error(e):
            raise
        print(f"{prog}: {error_line(e)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: interp SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "interp SUBCOMMAND --help shows the options of one."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = [c for c in COMMANDS if c.startswith(name[:2])]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        print(f"interp: unknown subcommand {name!r}.{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return run(f"interp {name}", module.main, rest)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
