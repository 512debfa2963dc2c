"""The ``interp`` command: one entry point for the toolkit's jobs.

    interp demo [--model NAME] [--out DIR]          the main job on the embedded model, HTML report
    interp train NAME [--install] [--set k=v ...]   train an embedded model (resumable)
    interp evaluate NAME [--path DIR]               transition / copy accuracy of an embedded model
    interp attention copying|perturbation ...       evaluation harness of the interaction maps
    interp cache --model M --hook H --out DIR ...   cache hook activations to disk (resumable)
    interp train-sae --config C --store DIR --out O train an SAE (resumable; data-parallel under torchrun)
    interp app [--model NAME]                      the Streamlit app (token interactions, features, steering)

Each subcommand is the ``main(argv)`` of its module (``python -m <module>`` works the same way);
``interp SUBCOMMAND --help`` shows its options.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module whose main(argv) runs it, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("interp.demo", "run the main job on the embedded default model and write an HTML report"),
    "train": ("interp.zoo.train", "train an embedded model from its recipe (checkpoints, resume)"),
    "evaluate": ("interp.zoo.evaluate", "evaluate an embedded model (transition or copy accuracy)"),
    "attention": ("interp.attention.evaluate", "copying benchmark and perturbation curves of interaction maps"),
    "cache": ("interp.activations.cli", "cache hook activations of a model over a token stream to disk shards"),
    "train-sae": ("interp.sae.cli", "train a sparse autoencoder from a config (cached or streamed; torchrun DDP)"),
    "app": ("interp.app_cli", "start the Streamlit app on 127.0.0.1 (interp app [--model NAME])"),
}


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
    module.main(rest)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
