"""Dependencies run one way: validating a topology loads the language and the operators, never
the runtime, a broker client (aiokafka) or the state stores (lmdb)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_validating_a_file_imports_neither_the_runtime_nor_aiokafka_nor_lmdb() -> None:
    code = ("import json, sys\nfrom pathlib import Path\nfrom edm_runner.language import load_file\n"
            "from edm_runner.operators import load_all\n"
            "load_all()\nload_file(Path(sys.argv[1]))\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "topologies/quickstart/topology.yaml")],
                         capture_output=True, text=True, check=True).stdout
    modules = json.loads(out)
    assert "edm_runner.operators.mapping" in modules  # the operators were built and checked
    loaded = [m for m in modules if m.split(".")[0] in ("aiokafka", "lmdb")
              or m.startswith(("edm_runner.runtime", "edm_runner.brokers"))]
    assert loaded == []


def test_serde_is_a_leaf_it_loads_no_other_edm_package() -> None:
    """Formats are used by every layer: encoding an event or a produce line needs the serde
    package alone (its spec, ``serde.spec.SerdeSpec``, lives there, not in the language)."""
    code = ("import json, sys\nfrom edm_runner.serde import SerdeSpec, make_serde\n"
            "from edm_runner.serde.lines import parse_lines, plain_serdes\n"
            "key, value = plain_serdes(SerdeSpec('string', keyed=True))\n"
            "parse_lines([b'{\"key\": \"k\", \"value\": 1}'], '<test>', False, key, value)\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    modules = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        check=True).stdout)
    edm = {m.split(".")[1] for m in modules if m.startswith("edm_runner.")}
    assert edm <= {"serde", "errors", "records"}


def test_running_on_the_embedded_broker_imports_no_kafka_client(tmp_path: Path) -> None:
    """`edm run` on the embedded broker loads aiokafka at no point (its import, about 0.05 s, was
    most of what the run loaded and did not need before its first event: bench `startup`)."""
    code = ("import json, sys\nfrom edm_runner.cli import main\n"
            "topology, state, found = sys.argv[1:]\n"
            "sys.argv = ['edm', 'run', topology, '--until-idle', '--state-dir', state]\n"
            "try:\n    main()\nexcept SystemExit as stop:\n    assert not stop.code, stop.code\n"
            "open(found, 'w').write(json.dumps(sorted(sys.modules)))\n")
    subprocess.run([sys.executable, "-c", code, str(ROOT / "topologies/quickstart/topology.yaml"),
                    str(tmp_path / "state"), str(tmp_path / "modules.json")], check=True, capture_output=True)
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert "edm_runner.brokers.local" in modules and "edm_runner.runtime.service" in modules  # it ran
    assert [m for m in modules if m.split(".")[0] == "aiokafka" or m.startswith("edm_runner.brokers.kafka")] == []


def test_validating_a_file_with_http_imports_neither_aiohttp_nor_prometheus() -> None:
    """`edm validate` of a service that answers HTTP (queries, ingestion, metrics) checks its
    `http:` section without loading the server side: no aiohttp, no prometheus-client, no serve."""
    code = ("import json, sys\nsys.argv = ['edm', 'validate', sys.argv[1]]\nfrom edm_runner.cli import main\n"
            "try:\n    main()\n    code = 0\nexcept SystemExit as exit:\n    code = exit.code\n"
            "print(json.dumps({'exit': code, 'modules': sorted(sys.modules)}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "topologies/click-ingest/topology.yaml")],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["exit"] == 0
    loaded = [m for m in result["modules"] if m.split(".")[0] in ("aiohttp", "prometheus_client", "multidict")
              or m.startswith("edm_runner.serve")]
    assert loaded == []
