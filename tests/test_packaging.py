"""pyproject.toml declares every package folder and every third-party import; the wheel holds them all."""

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Package folders that stay in the repository: evidence scripts run from a clone.
NOT_SHIPPED = {"experiments"}
# Import names whose distribution on PyPI has another name.
DISTRIBUTION_OF = {"PIL": "pillow", "yaml": "pyyaml", "astra": "astra-toolbox", "sklearn": "scikit-learn"}


def _pyproject(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements) -> set:
    return {_normalised(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r).group(0)) for r in requirements}


def _module_file(root: Path, name: str):
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str):
    """``(imported module, runs when the file is imported)`` for every import statement of a file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    class Visitor(ast.NodeVisitor):
        depth = 0

        def visit_FunctionDef(self, node):
            self.depth += 1
            self.generic_visit(node)
            self.depth -= 1

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Import(self, node):
            found.extend((alias.name, self.depth == 0) for alias in node.names)

        def visit_ImportFrom(self, node):
            parts = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            found.append((base, self.depth == 0))
            found.extend((f"{base}.{alias.name}", self.depth == 0) for alias in node.names)

    Visitor().visit(ast.parse(path.read_text(), str(path)))
    return found


def _is_local(root: Path, name: str) -> bool:
    top = name.split(".")[0]
    return (root / top).is_dir() or (root / f"{top}.py").is_file() or (root / "tests" / f"{top}.py").is_file()


def _third_party(name: str) -> bool:
    return bool(name) and name.split(".")[0] not in sys.stdlib_module_names


def undeclared_imports(root: Path) -> list:
    """Problems, one line each: imports of the package that pyproject.toml does not declare.

    A module imported while ``import <package>`` or an entry module runs must be a dependency; one
    imported later (inside a function, or by a module only imported there) may be in an extra; the
    tests' imports must be in the dependencies or the ``test`` extra.
    """
    project = _pyproject(root)["project"]
    setup = _pyproject(root)["tool"]["setuptools"]
    required = _requirement_names(project.get("dependencies", []))
    extras = {
        name: _requirement_names(reqs) for name, reqs in project.get("optional-dependencies", {}).items()
    }
    optional = required.union(*(names for extra, names in extras.items() if extra != "test"))
    problems = []

    def check(name, path, allowed, what):
        distribution = _normalised(DISTRIBUTION_OF.get(name.split(".")[0], name.split(".")[0]))
        if distribution not in allowed:
            problems.append(
                f"{path.relative_to(root)} imports {name.split('.')[0]}: {distribution} is not {what}"
            )

    # Modules that run on import: the packages, the entry modules, and what they import at their top.
    pending = list(setup["packages"]) + list(setup.get("py-modules", []))
    loaded = set()
    while pending:
        module = pending.pop()
        path = _module_file(root, module)
        if module in loaded or path is None:
            continue
        loaded.add(module)
        for name, at_import in _imports(path, module):
            if at_import and _is_local(root, name):
                parts = name.split(".")
                pending.extend(".".join(parts[: i + 1]) for i in range(len(parts)))
            elif at_import and _third_party(name):
                check(name, path, required, "a dependency in pyproject.toml")
    shipped = [root / f"{m}.py" for m in setup.get("py-modules", [])]
    for package in setup["packages"]:
        shipped += sorted((root / package.replace(".", "/")).glob("*.py"))
    for path in shipped:
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for name, _ in _imports(path, module):
            if _third_party(name) and not _is_local(root, name):
                check(name, path, optional, "a dependency or an extra in pyproject.toml")
    for path in sorted((root / "tests").glob("*.py")):
        for name, _ in _imports(path, f"tests.{path.stem}"):
            if _third_party(name) and not _is_local(root, name):
                check(name, path, required | extras.get("test", set()), "a dependency or in the test extra")
    return sorted(set(problems))


def test_every_package_folder_is_declared_and_exists():
    declared = set(_pyproject()["tool"]["setuptools"]["packages"])
    folders = {init.parent.name for init in ROOT.glob("*/__init__.py")} - NOT_SHIPPED
    assert folders - declared == set(), "package folders missing from [tool.setuptools] packages"
    assert declared - folders == set(), "declared packages without a folder holding __init__.py"
    nested = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for p in declared
        for init in (ROOT / p).rglob("*/__init__.py")
    }
    assert nested - declared == set(), "sub-packages must be declared too"


def test_every_import_is_declared():
    assert undeclared_imports(ROOT) == []


def test_undeclared_imports_are_found(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("import numpy\nfrom pkg import lazy\n")
    (tmp_path / "pkg" / "lazy.py").write_text("import yaml\n\ndef f():\n    import astra\n")
    (tmp_path / "pkg" / "backend.py").write_text("import triton\n")
    (tmp_path / "tests" / "test_x.py").write_text("import pytest\nimport hypothesis\n")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\ndependencies = ["numpy>=1"]\n'
        '[project.optional-dependencies]\ncuda = ["triton"]\nastra = ["astra-toolbox"]\n'
        'test = ["pytest", "PyYAML"]\n'
        '[tool.setuptools]\npackages = ["pkg"]\n'
    )
    assert undeclared_imports(tmp_path) == [
        "pkg/lazy.py imports yaml: pyyaml is not a dependency in pyproject.toml",
        "pkg/lazy.py imports yaml: pyyaml is not a dependency or an extra in pyproject.toml",
        "tests/test_x.py imports hypothesis: hypothesis is not a dependency or in the test extra",
    ]


def test_entry_points_name_functions_of_shipped_modules():
    setup = _pyproject()["tool"]["setuptools"]
    scripts = _pyproject()["project"]["scripts"]
    assert set(scripts) == {"iscs-recon-cbct", "iscs-recon-zsr"}
    for target in scripts.values():
        module, function = target.split(":")
        assert module in setup["py-modules"] + setup["packages"]
        tree = ast.parse(_module_file(ROOT, module).read_text())
        assert function in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_requirement_files_install_the_package_without_cuda_libraries():
    extras = _pyproject()["project"]["optional-dependencies"]
    for name, wanted in (("requirements.txt", set()), ("requirements-test.txt", {"test"})):
        lines = [line for line in (ROOT / name).read_text().splitlines() if line.strip() and line[0] != "#"]
        assert len(lines) == 1, f"{name}: the dependencies have one home, pyproject.toml"
        match = re.fullmatch(r"-e \.(?:\[([\w,-]+)\])?", lines[0])
        assert match, lines[0]
        chosen = set(match.group(1).split(",")) if match.group(1) else set()
        assert chosen == wanted and chosen <= set(extras)
        pulled = _requirement_names(_pyproject()["project"]["dependencies"]).union(
            *(_requirement_names(extras[extra]) for extra in chosen)
        )
        assert not pulled & {"astra-toolbox", "triton", "ninja"}, name


def _setuptools_major() -> int:
    try:
        return int(metadata.version("setuptools").split(".")[0])
    except metadata.PackageNotFoundError:
        return 0


@pytest.mark.skipif(
    _setuptools_major() < 77, reason="building the wheel offline needs setuptools >= 77 (test extra)"
)
def test_wheel_holds_the_packages_kernel_sources_and_entry_points(tmp_path):
    source = tmp_path / "source"
    setup = _pyproject()["tool"]["setuptools"]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in setup["packages"]:
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    for name in ["pyproject.toml", "README.md", "LICENSE"] + [f"{m}.py" for m in setup["py-modules"]]:
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from setuptools import build_meta; print(build_meta.build_wheel({str(tmp_path)!r}))",
        ],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = zipfile.ZipFile(tmp_path / build.stdout.strip().splitlines()[-1])
    names = set(wheel.namelist())
    expected = {f"{m}.py" for m in setup["py-modules"]}
    for package in setup["packages"]:
        expected |= {p.relative_to(source).as_posix() for p in (source / package).rglob("*") if p.is_file()}
    assert expected - names == set()
    assert {
        "op/upfirdn2d_kernel.cu",
        "op/fused_bias_act_kernel.cu",
        "op/bindings.cpp",
        "op/launch.cuh",
    } <= names
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = wheel.read(info).decode()
    requires = {
        line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")
    }
    assert {r for r in requires if "extra ==" not in r} == set(_pyproject()["project"]["dependencies"])
    entry_points = wheel.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert (
        "iscs-recon-cbct = recon_CBCT:main" in entry_points
        and "iscs-recon-zsr = recon_MRI_ZSR:main" in entry_points
    )
