"""`edm validate`, `graph`, `describe`: the commands that read a topology file only (`edm schema`: cli.schemas)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edm_runner.cli.common import (FileArgument, GraphFormat, NoCodeOption, OutputFormat, OutputFormatOption, app,
                                   guarded, load, services_of)


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Topology files (and test files, *.test.yaml) to check.")],
    output: OutputFormatOption = OutputFormat.text,
    no_code: NoCodeOption = False,
) -> None:
    """Check topology files: every error of every file, as file:line:col: message (and warnings,
    which do not make a file invalid)."""
    def body() -> int:
        from edm_runner.language import validate_file
        diagnostics, warnings = [], []
        for path in files:
            if path.name.endswith(".test.yaml"):  # a test file of `edm test`: its own schema
                from edm_runner.testing.spec import load_test_file
                diagnostics.extend(load_test_file(path).diagnostics)
                continue
            validation = validate_file(path, no_code=no_code)
            diagnostics.extend(validation.errors)
            warnings.extend(validation.warnings)
        if output is OutputFormat.json:
            typer.echo(json.dumps({"valid": not diagnostics, "files": [str(f) for f in files],
                                   "errors": [d.as_json() for d in diagnostics],
                                   "warnings": [w.as_json() for w in warnings]}, indent=2))
        else:
            for diagnostic in sorted(diagnostics + warnings):
                typer.echo(diagnostic.format(), err=True)
            counted = f", {len(warnings)} warning(s)" if warnings else ""
            if not diagnostics:
                typer.echo(f"{len(files)} file(s) valid{counted}")
            else:
                typer.echo(f"{len(diagnostics)} error(s){counted}", err=True)
        return 1 if diagnostics else 0
    guarded(body)


@app.command()
def graph(
    file: FileArgument,
    output: Annotated[GraphFormat, typer.Option("--format", help="mermaid or dot.")] = GraphFormat.mermaid,
) -> None:
    """Draw a topology (a business topology draws its microservices and the streams between them)."""
    def body() -> int:
        from edm_runner.graph.draw import to_dot, to_mermaid
        topology = load(file)
        typer.echo(to_mermaid(topology) if output is GraphFormat.mermaid else to_dot(topology), nl=False)
        return 0
    guarded(body)


@app.command()
def describe(
    file: FileArgument,
    output: OutputFormatOption = OutputFormat.text,
) -> None:
    """Print a microservice's sub-topologies, tasks, internal topics and copartition groups
    (a business topology: each of its microservices)."""
    def body() -> int:
        from edm_runner.graph.dag import describe as describe_topology
        docs = [describe_topology(s) for s in services_of(load(file))]
        if output is OutputFormat.json:
            typer.echo(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
        else:
            typer.echo("\n".join(_describe_text(doc) for doc in docs), nl=False)
        return 0
    guarded(body)


def _describe_text(doc: dict) -> str:
    lines = [f"service {doc['service']}: {len(doc['subtopologies'])} sub-topologies, {len(doc['tasks'])} tasks"]
    for sub in doc["subtopologies"]:
        tasks = ", ".join(f"{sub['id']}_{p}" for p in range(sub["tasks"]))
        lines += [f"  sub-topology {sub['id']}: tasks {tasks}",
                  f"    sources: {', '.join(sub['source_topics']) or '-'}",
                  f"    sinks:   {', '.join(sub['sink_topics']) or '-'}"]
        if sub["stores"]:
            lines.append(f"    stores:  {', '.join(sub['stores'])}")
        lines += [f"    {node['kind']:<7} {node['label']}" for node in sub["nodes"]]
    if doc["internal_topics"]:
        lines.append("  internal topics:")
        lines += [f"    {topic} ({t['kind']}, {t['partitions']} partitions"
                  f"{', compacted' if t.get('compacted') else ''}, "
                  f"key {t['key']}, value {t['value']}"
                  f"{'' if t.get('partitioner', 'default') == 'default' else ', partitioner ' + t['partitioner']})"
                  for topic, t in doc["internal_topics"].items()]
    if doc["copartition_groups"]:
        lines.append("  copartition groups:")
        lines += [f"    {g['join']}: " + ", ".join(
                      f"{s} ({t}, {n} partitions, key {k}{'' if p == 'default' else ', partitioner ' + p})"
                      for s, t, n, k, p in zip(g["streams"], g["topics"], g["partitions"], g["key_formats"],
                                               g["partitioners"]))
                  for g in doc["copartition_groups"]]
    if doc["global_tables"]:
        lines.append("  global tables: " + ", ".join(f"{n} ({t})" for n, t in doc["global_tables"].items()))
    return "\n".join(lines) + "\n"
