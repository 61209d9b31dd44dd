"""`edm chart values FILE -o DIR`: the Helm values of charts/edm for a microservice, or an
umbrella chart (Chart.yaml + values.yaml) for a business topology (``deploy.chart``)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edm_runner.cli.common import FileArgument, app, guarded
from edm_runner.errors import EdmError

chart_app = typer.Typer(no_args_is_help=True, help="Deploy on Kubernetes with the Helm charts in charts/.")
app.add_typer(chart_app, name="chart")


@chart_app.command("values")
def values(
    file: FileArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write values.yaml (and, for a "
                                      "business topology, the umbrella's Chart.yaml) into.")],
    chart: Annotated[Optional[Path], typer.Option(
        "--chart", help="The edm chart (charts/edm) an umbrella depends on (default: the one of this "
        "checkout).")] = None,
) -> None:
    """Write the chart values of a microservice, or an umbrella chart of a business topology:
    the topology's files (for the ConfigMap), task count, shutdown grace, standbys and HTTP port."""
    def body() -> int:
        from edm_runner.deploy import chart as deploy
        from edm_runner.language import load_file
        from edm_runner.language.model import BusinessTopology
        topology = load_file(file, env=deploy.chart_env())
        if isinstance(topology, BusinessTopology):
            chart_dir = chart or deploy.default_chart_dir()
            if chart_dir is None:
                raise EdmError(f"edm chart values {file} -o {out}: where is the edm chart? Pass --chart "
                               "DIR (the charts/edm directory of the edm sources)")
            result = deploy.business_chart(topology, chart_dir, out)
            header = (f"# Written by `edm chart values {file} -o {out}`: one charts/edm instance per service.\n"
                      f"#   helm dependency build {out} && helm install {result.name} {out} "
                      "--set global.kafka.bootstrapServers=HOST:PORT\n")
        else:
            result = deploy.service_values(topology)
            header = (f"# Written by `edm chart values {file} -o {out}`.\n"
                      f"#   helm install {result.name} charts/edm -f {out}/values.yaml "
                      "--set kafka.bootstrapServers=HOST:PORT\n")
        for path in deploy.write(result, out, header):
            typer.echo(str(path))
        for warning in result.warnings:
            typer.echo(f"edm: warning: {warning}", err=True)
        return 0
    guarded(body)
