"""``internvl-operator``: the operator's command line.

``run`` is the operator itself. The other subcommands need no cluster and work like
``helm template``: they read files and print.

    internvl-operator run (-n NAMESPACE... | -A)   watch InternVLFinetunes and run their jobs

    internvl-operator validate FILE...        check InternVLFinetune objects offline
    internvl-operator plan FILE...            print the sizing plan of InternVLFinetune objects
    internvl-operator render FILE...          print the objects the operator would create
    internvl-operator crds [--output DIR]     print or write the generated CRD

Exit codes: 0 success, 2 bad input (every problem printed as ``field.path: reason``, or a plan
for which nothing fits), 1 failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from internvl_operator.api import KIND
from internvl_operator.crd import CRD_FILENAME, crd_yaml
from internvl_operator.launchers import AUTO, AUTO_ORDER, LAUNCHERS, Launcher, chosen, none_served
from internvl_operator.planner import Plan, plan
from internvl_operator.render import render
from internvl_operator.resolve import render_context
from internvl_operator.settings import OperatorSettings
from internvl_operator.validation import parse, validate
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


def _objects(sources: list[str]) -> list[tuple[str, int, object]]:
    """Every InternVLFinetune document of the files (and documents that are not mappings, so that
    validation can name them), with its file and index."""
    found = []
    for source in sources:
        documents = [d for d in load_yaml_documents(source) if not isinstance(d, dict) or d.get("kind") == KIND]
        if not documents:
            raise BadInput([Problem(source, f"no {KIND} object in the file")])
        found += [(source, index, document) for index, document in enumerate(documents)]
    return found


def _planned(sources: list[str], served: frozenset[str]) -> list[tuple[str, int, object, Plan, Launcher]]:
    """The valid objects of the files with their plans and launchers, on a cluster serving the
    launchers ``served``. Raises BadInput on any invalid one, or one no launcher can run."""
    planned = []
    for source, index, document in _objects(sources):
        problems = validate(document)
        if problems:
            raise BadInput(problems)
        spec = parse(document).spec
        where = f"{source}: {_name_of(document)}"
        launcher = chosen(spec, None, served)
        if launcher is None:
            raise BadInput([Problem(where, none_served(spec, served))])
        unsupported = launcher.unsupported(spec)
        if unsupported:
            raise BadInput([Problem(where, reason) for reason in unsupported])
        planned.append((source, index, document, plan(spec), launcher))
    return planned


def _old_object(source: str | None) -> object:
    if source is None:
        return None
    documents = [d for d in load_yaml_documents(source) if isinstance(d, dict) and d.get("kind") == KIND]
    if len(documents) != 1:
        raise BadInput([Problem(source, f"--old needs exactly one {KIND}, found {len(documents)}")])
    return documents[0]


def _validate(args: argparse.Namespace) -> int:
    old = _old_object(args.old)
    results = [
        (source, index, _name_of(document), validate(document, old)) for source, index, document in _objects(args.files)
    ]

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


def _plan_table(plan: Plan, launcher: str) -> str:
    """A plan as a two-column table, the memory estimate broken down by part."""
    rows = [
        ("launcher", launcher),
        ("nodes x GPUs", f"{plan.nodes} x {plan.gpus_per_node} ({plan.gpus} GPUs)"),
        (
            "DeepSpeed",
            f"ZeRO-{plan.zero_stage}{' + CPU offload' if plan.offload else ''} ({plan.deepspeed_variant})",
        ),
        (
            "batch",
            f"{plan.per_device_batch_size} per device x {plan.gradient_accumulation_steps} accumulation x "
            f"{plan.gpus} GPUs = {plan.global_batch_size}",
        ),
        ("learning rate", f"{plan.learning_rate:g} (weight decay {plan.weight_decay:g})"),
        ("drop path", f"{plan.drop_path_rate:g}"),
        ("limits", f"{plan.max_seq_length} tokens, {plan.max_tiles} tiles per image"),
        (
            "memory per GPU",
            f"{plan.memory.total_gib:.1f} GiB estimated, budget {plan.budget_gib:.1f} of {plan.gpu_memory_gib:g} GiB",
        ),
    ]
    rows += [(f"  {part.name}", f"{part.gib:.2f} GiB") for part in plan.memory.parts]
    width = max(len(key) for key, _ in rows) + 2
    lines = [f"{key.ljust(width)}{value}" for key, value in rows]
    lines += ["notes:"] + [f"  - {note}" for note in plan.notes]
    return "\n".join(lines) + "\n"


def _launcher_row(document: object, launcher: Launcher) -> str:
    """The launcher of an object as a cluster would run it: its own, or what auto picks."""
    if parse(document).spec.launcher != AUTO:
        return launcher.name
    return f"{AUTO}: {launcher.name} on a cluster serving every launcher (order {', '.join(AUTO_ORDER)})"


def _plan(args: argparse.Namespace) -> int:
    results = _planned(args.files, frozenset(LAUNCHERS))

    if args.output == "table":
        for source, _index, document, result, launcher in results:
            name = _name_of(document)
            print(f"{source}: {name}: {result.model} {result.method}, policy {result.policy}: {result.verdict}")
            sys.stdout.write(_plan_table(result, _launcher_row(document, launcher)))
    else:
        report = {
            "plans": [
                {
                    "file": source,
                    "index": index,
                    "name": _name_of(document),
                    "plan": result.to_wire(),
                    "launcher": launcher.name,
                }
                for source, index, document, result, launcher in results
            ]
        }
        sys.stdout.write(dumps_json(report) if args.output == "json" else yaml.safe_dump(report, sort_keys=False))
    return EXIT_BAD_INPUT if any(result.verdict == "nothing-fits" for _, _, _, result, _ in results) else EXIT_OK


class _BlockStyleDumper(yaml.SafeDumper):
    """Writes multi-line strings (train.yaml inside its ConfigMap) as readable literal blocks."""


_BlockStyleDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def _settings(args: argparse.Namespace) -> OperatorSettings:
    """The installation's settings: flags over INTERNVL_OPERATOR_* variables over defaults."""
    overrides = {name: getattr(args, f"setting_{name}") for name in OperatorSettings.model_fields}
    return OperatorSettings(**{name: value for name, value in overrides.items() if value is not None})


def _render(args: argparse.Namespace) -> int:
    settings = _settings(args)
    documents = []
    served = frozenset([args.launcher] if args.launcher else LAUNCHERS)
    for source, _index, document, result, launcher in _planned(args.files, served):
        resource = parse(document)
        refusal = settings.privilege_refusal(resource.spec)
        if result.verdict == "nothing-fits" or refusal is not None:
            reason = refusal[1] if refusal is not None else result.notes[0]
            raise BadInput([Problem(f"{source}: {_name_of(document)}", reason)])
        documents += render(render_context(resource, result, args.attempt, settings, launcher))
    sys.stdout.write(yaml.dump_all(documents, Dumper=_BlockStyleDumper, sort_keys=False))
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    if not args.namespace and not args.all_namespaces:
        raise BadInput([Problem("--namespace", "name the namespaces to watch (-n, repeatable) or --all-namespaces")])
    import kopf  # the other subcommands start faster without it
    import prometheus_client

    from internvl_operator.handlers import REGISTRY

    settings = _settings(args)
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])
    kopf.run(
        registry=REGISTRY,
        memo=kopf.Memo(operator_settings=settings),
        standalone=args.standalone,
        namespaces=args.namespace,
        clusterwide=args.all_namespaces,
        liveness_endpoint=args.liveness,
    )
    return EXIT_OK


def _crds(args: argparse.Namespace) -> int:
    if args.output is None:
        sys.stdout.write(crd_yaml())
    else:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / CRD_FILENAME).write_text(crd_yaml())
    return EXIT_OK


def _add_settings(command: argparse.ArgumentParser) -> None:
    """One flag per installation setting, so that render prints what that installation creates."""
    for name, field in OperatorSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        command.add_argument(
            flag, dest=f"setting_{name}", help=f"{field.description} (env INTERNVL_OPERATOR_{name.upper()})"
        )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="internvl-operator", description=__doc__.split("\n")[0])
    commands = root.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator: watch InternVLFinetunes and run their jobs")
    run.add_argument("-n", "--namespace", action="append", default=[], help="namespace to watch (repeatable, globs)")
    run.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    run.add_argument("--standalone", action="store_true", help="no peering with other operator instances")
    run.add_argument("--liveness", metavar="URL", help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--log-format", choices=["plain", "full", "json"], default="full")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    run.add_argument("--verbose", action="store_true")
    _add_settings(run)
    run.set_defaults(handler=_run)

    check = commands.add_parser("validate", help="check InternVLFinetune objects offline, CEL rules included")
    check.add_argument("files", nargs="+", metavar="FILE", help="YAML files ('-' for standard input)")
    check.add_argument("--old", metavar="FILE", help="the object before an update, to check transition rules")
    check.add_argument("--output", choices=["text", "json"], default="text")
    check.set_defaults(handler=_validate)

    sizing = commands.add_parser("plan", help="print the sizing plan: GPUs, ZeRO stage, batch layout, memory")
    sizing.add_argument("files", nargs="+", metavar="FILE", help="YAML files ('-' for standard input)")
    sizing.add_argument("--output", choices=["table", "yaml", "json"], default="table")
    sizing.set_defaults(handler=_plan)

    children = commands.add_parser("render", help="print the objects the operator would create, like helm template")
    children.add_argument("files", nargs="+", metavar="FILE", help="YAML files ('-' for standard input)")
    children.add_argument("--attempt", type=int, default=1, help="attempt number (default 1)")
    children.add_argument(
        "--launcher",
        choices=list(AUTO_ORDER),
        help=(
            "the launcher the cluster serves, for objects whose spec.launcher is auto "
            "(default: what auto picks on a cluster serving every launcher: trainjob where it can carry the spec)"
        ),
    )
    _add_settings(children)
    children.set_defaults(handler=_render)

    crds = commands.add_parser("crds", help="print the CRD, or write it into a folder")
    crds.add_argument("--output", type=Path, metavar="DIR", help=f"write DIR/{CRD_FILENAME}")
    crds.set_defaults(handler=_crds)
    return root


def main(argv: list[str] | None = None) -> int:
    return run_command(parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
