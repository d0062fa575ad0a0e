"""Nothing unpickles, read from the source: events are JSON and artifacts are ONNX + JSON, so a tampered
file can at worst be refused, never run code. A pickle loader that appears anywhere fails here."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("stream", "src/rankstream", "deploy", "bench", "compression")
PICKLING_MODULES = ("pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal")

# Known and reviewed, by file and what it loads. A fix removes the line here (the test says so).
KNOWN = {
    # The job's own resume checkpoint (optimizer and scheduler state) in its work folder, written by the
    # same job, never shipped in or read from an artifact.
    "compression/distil.py: torch.load",
}


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "not a constant"
    return None


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def unpickling(source: str) -> list[str]:
    """What in `source` can unpickle: pickling modules imported, torch.load without weights_only=True,
    np.load with allow_pickle other than False, pandas read_pickle."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"import {n}" for n in names if n.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name.endswith("torch.load") and _keyword(node, "weights_only") is not True:
                found.append("torch.load")
            elif name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy"):
                if _keyword(node, "allow_pickle") not in (None, False):
                    found.append("np.load(allow_pickle)")
            elif name.split(".")[-1] == "read_pickle":
                found.append("read_pickle")
    return found


def test_no_code_unpickles_beyond_the_known_cases() -> None:
    found = {
        f"{path.relative_to(ROOT)}: {what}"
        for folder in FOLDERS
        for path in sorted((ROOT / folder).rglob("*.py"))
        for what in unpickling(path.read_text())
    }
    assert found - KNOWN == set(), "these can run code from a file: use JSON, ONNX or safetensors"
    assert KNOWN - found == set(), "fixed: remove these from KNOWN"


def test_the_check_finds_each_way_to_unpickle() -> None:
    # Guards the guard: each form is caught, and the safe forms are not.
    unsafe = {
        "import pickle": "import pickle",
        "from joblib import load": "import joblib",
        "import torch\ntorch.load(f)": "torch.load",
        "torch.load(f, weights_only=False)": "torch.load",
        "np.load(f, allow_pickle=True)": "np.load(allow_pickle)",
        "pd.read_pickle(f)": "read_pickle",
    }
    for source, what in unsafe.items():
        assert what in unpickling(source), source
    safe = ("torch.load(f, weights_only=True)", "np.load(f)", "numpy.load(f, allow_pickle=False)", "json.load(f)")
    assert [s for s in safe if unpickling(s)] == []
