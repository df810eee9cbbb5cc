"""``internvl-operator``: the operator's command line.

Subcommands that need no cluster work like ``helm template``: they read files and print.

    internvl-operator validate FILE...        check InternVLFinetune objects offline
    internvl-operator crds [--output DIR]     print or write the generated CRD

Exit codes: 0 success, 2 bad input (every problem printed as ``field.path: reason``), 1 failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from internvl_operator.api import KIND
from internvl_operator.crd import CRD_FILENAME, crd_yaml
from internvl_operator.validation import validate
from internvl_trainer.problems import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    BadInput,
    Problem,
    as_json,
    dumps_json,
    load_yaml_documents,
    render_text,
    run_command,
)


def _name_of(document: object) -> str:
    metadata = document.get("metadata") if isinstance(document, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return f"{KIND}/{name}" if isinstance(name, str) else KIND


def _old_object(source: str | None) -> object:
    if source is None:
        return None
    documents = [d for d in load_yaml_documents(source) if isinstance(d, dict) and d.get("kind") == KIND]
    if len(documents) != 1:
        raise BadInput([Problem(source, f"--old needs exactly one {KIND}, found {len(documents)}")])
    return documents[0]


def _validate(args: argparse.Namespace) -> int:
    results = []
    old = _old_object(args.old)
    for source in args.files:
        documents = [d for d in load_yaml_documents(source) if not isinstance(d, dict) or d.get("kind") == KIND]
        if not documents:
            raise BadInput([Problem(source, f"no {KIND} object in the file")])
        for index, document in enumerate(documents):
            results.append((source, index, _name_of(document), validate(document, old)))

    valid = all(not problems for *_, problems in results)
    if args.output == "json":
        sys.stdout.write(
            dumps_json(
                {
                    "valid": valid,
                    "documents": [
                        {"file": source, "index": index, "name": name, "problems": as_json(problems)}
                        for source, index, name, problems in results
                    ],
                }
            )
        )
    else:
        for source, _index, name, problems in results:
            print(f"{source}: {name}: {'invalid' if problems else 'valid'}")
            sys.stdout.write(render_text(problems))
    return EXIT_OK if valid else EXIT_BAD_INPUT


def _crds(args: argparse.Namespace) -> int:
    if args.output is None:
        sys.stdout.write(crd_yaml())
    else:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / CRD_FILENAME).write_text(crd_yaml())
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="internvl-operator", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)

    check = commands.add_parser("validate", help="check InternVLFinetune objects offline, CEL rules included")
    check.add_argument("files", nargs="+", metavar="FILE", help="YAML files ('-' for standard input)")
    check.add_argument("--old", metavar="FILE", help="the object before an update, to check transition rules")
    check.add_argument("--output", choices=["text", "json"], default="text")
    check.set_defaults(handler=_validate)

    crds = commands.add_parser("crds", help="print the CRD, or write it into a folder")
    crds.add_argument("--output", type=Path, metavar="DIR", help=f"write DIR/{CRD_FILENAME}")
    crds.set_defaults(handler=_crds)
    return root


def main(argv: list[str] | None = None) -> int:
    return run_command(parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
