"""docs/language.md is the language reference the README points to: every registered operator
has its section, and every YAML example in it validates, put into the service it opens with."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from cli_helpers import ROOT, TOPOLOGIES, edm
from edm_runner.operators.registry import operators

DOC = ROOT / "docs" / "language.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)


def test_every_operator_has_a_section_with_an_example() -> None:
    assert "(docs/language.md)" in (ROOT / "README.md").read_text()  # found from the README
    text = DOC.read_text()
    for name in operators():
        section = re.search(rf"^### `{name}`\n(.*?)(?=^##)", text, re.S | re.M)
        assert section, f"docs/language.md has no section for the step `{name}`"
        assert f"- {name}:" in section.group(1), f"the section of `{name}` has no example"


def test_every_section_of_the_schema_is_documented() -> None:
    import json
    schema = json.loads((ROOT / "schemas" / "topology.schema.json").read_text())["$defs"]
    text = DOC.read_text()
    for section in schema["microservice"]["properties"]:
        assert f"`{section}`" in text, section
    for option in [*schema["processing"]["properties"], *schema["stream"]["properties"],
                   *schema["store"]["properties"]]:
        assert f"`{option}`" in text, option


def _fragment(base: dict, block: dict | list) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(base))
    if isinstance(block, list):
        doc["pipelines"]["example"]["steps"] = block
    elif "pipelines" in block:
        doc = {**doc, **block}
    else:
        for section, value in block.items():
            if isinstance(value, dict) and isinstance(doc.get(section), dict):
                doc[section].update(value)
            else:
                doc[section] = value
    return doc


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_yaml_example_validates(index: int, tmp_path: Path) -> None:
    base = yaml.safe_load(BLOCKS[0])
    block = yaml.safe_load(BLOCKS[index])
    if isinstance(block, dict) and block.get("kind") == "business":
        shutil.copytree(TOPOLOGIES / "payroll", tmp_path / "t" / "payroll")
        shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
        file = tmp_path / "t" / "payroll" / "example.yaml"
        file.write_text(BLOCKS[index])
    else:
        file = tmp_path / "example.yaml"
        shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
        (tmp_path / "scoring.py").write_text("def risk(value):\n    return 0\n")
        file.write_text(yaml.safe_dump(_fragment(base, block), sort_keys=False))
    result = edm("validate", file)
    assert result.code == 0, f"example {index} of docs/language.md:\n{BLOCKS[index]}\n{result.stderr}"
