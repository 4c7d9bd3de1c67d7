"""The import layering the README documents: every module imports alone, and dependencies point down.

Layers, lowest first (a module may import its own layer and the layers below, never above):
  leaf      medvlm, errors, clock, paths, fileio, records, finding_ids, redact, csvsafe
  domain    config, prompts, ingest, findings, risk, models, report
  audit     audit           (besides leaf: only config, report.validate and ingest.privacy helpers)
  stages    resources, stages
  run       outputs, executors
  commands  pipeline, regrade, bench, and the other command modules (evaluate/, review/, serve/ ...)
  cli       cli, console, __main__
Imports inside functions count too: a lazy import upward is still a dependency upward.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "medvlm"

LAYERS = [
    ("leaf", {"medvlm", "medvlm.errors", "medvlm.clock", "medvlm.paths", "medvlm.fileio", "medvlm.records",
              "medvlm.finding_ids", "medvlm.redact", "medvlm.csvsafe"}),
    ("domain", {"medvlm.config", "medvlm.prompts", "medvlm.ingest", "medvlm.findings", "medvlm.risk", "medvlm.models",
                "medvlm.report"}),
    ("audit", {"medvlm.audit"}),
    ("stages", {"medvlm.resources", "medvlm.stages"}),
    ("run", {"medvlm.outputs", "medvlm.executors"}),
    ("commands", None),  # everything not listed elsewhere
    ("cli", {"medvlm.cli", "medvlm.console", "medvlm.__main__"}),
]
# The audit layer reads and writes run folders; it may use these helpers, but no stage, model or report logic.
AUDIT_MAY_IMPORT = {"medvlm.config", "medvlm.report.validate", "medvlm.ingest.privacy"}


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def layer_of(module: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        if members is None:
            continue
        if any(module == m or (m != "medvlm" and module.startswith(m + ".")) for m in members):
            return index
    return next(i for i, (_, members) in enumerate(LAYERS) if members is None)


def imports_of(module: str) -> set[str]:
    """Every medvlm module `module` imports, at top level or inside functions."""
    path = PACKAGE.parent / Path(*module.split("."))
    is_package = path.is_dir()
    source = (path / "__init__.py") if is_package else path.with_suffix(".py")
    tree = ast.parse(source.read_text(encoding="utf-8"))
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "medvlm")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "medvlm":
                continue
            found.add(target)
            for alias in node.names:  # `from . import stages` imports the module medvlm.stages
                candidate = f"{target}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").is_file() or (
                    PACKAGE.parent / Path(*candidate.split("."))
                ).is_dir():
                    found.add(candidate)
    found.discard(module)
    return found


def test_every_module_imports_on_its_own():
    script = (
        "import importlib, sys\n"
        "bad = []\n"
        f"for name in {[m for m in modules() if m != 'medvlm.__main__']!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'medvlm' or m.startswith('medvlm.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        bad.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dependencies_point_down_the_layers():
    wrong = []
    for module in modules():
        mine = layer_of(module)
        for target in imports_of(module):
            theirs = layer_of(target)
            if theirs > mine:
                wrong.append(f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})")
            elif LAYERS[mine][0] == "audit" and LAYERS[theirs][0] == "domain" and target not in AUDIT_MAY_IMPORT:
                wrong.append(f"{module} (audit) imports {target}, a stage module")
    assert not wrong, "\n".join(wrong)


def test_the_import_scanner_sees_relative_lazy_and_module_imports():
    local = imports_of("medvlm.executors.local")
    assert {"medvlm.stages", "medvlm.report.write", "medvlm.executors.base"} <= local
    assert "medvlm.models.hf" in imports_of("medvlm.models.backends") or "medvlm.models.base" in imports_of(
        "medvlm.models.backends")
    assert "medvlm.pipeline" in imports_of("medvlm.cli")  # imported inside a command function
    assert layer_of("medvlm.audit.run") > layer_of("medvlm.models.hf.backend") > layer_of("medvlm.errors")
    # The review app is a command; its ledger record and checks belong to the audit layer.
    assert LAYERS[layer_of("medvlm.review.app")][0] == "commands"
    assert LAYERS[layer_of("medvlm.audit.reviews")][0] == "audit"
    assert "medvlm.audit.reviews" in imports_of("medvlm.audit.verify")


def test_the_layer_table_covers_the_layers_it_names():
    # A typo in LAYERS would silently put a module into "commands"; every listed name must exist.
    listed = {m for _, members in LAYERS if members for m in members}
    existing = set(modules())
    assert listed <= existing, listed - existing
