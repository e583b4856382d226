"""The data files shipped with picklegate: the presets and the gadget list.

* every preset and gadgets.yaml has the documented shape;
* no built-in preset admits a known gadget (policy check does not review presets, so this
  test is what does);
* the numpy preset has both the NumPy 1.x and 2.x spellings;
* where torch, numpy or scikit-learn are installed, the presets still cover what they write
  (checked with picklegate's own static scanner: nothing is ever unpickled here).
"""
from __future__ import annotations

import io
import pickle
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest
import yaml

from picklegate.policy import Policy, load_presets
from picklegate.review import admitted, load_gadgets

PACKAGE = resources.files("picklegate")
PRESETS = PACKAGE / "presets"
# The only library the test extra leaves out (it is large; CI installs its pinned CPU build).
TORCH_MISSING = "needs torch, which the test extra does not install"
GADGETS = PACKAGE / "data" / "gadgets.yaml"
REQUIRED_PRESETS = ("builtins-safe", "torch", "numpy", "sklearn")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\.\*)?$")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
ROOT = Path(__file__).resolve().parents[1]


def preset_names() -> list[str]:
    names = sorted(p.name[:-5] for p in PRESETS.iterdir() if p.name.endswith(".yaml"))
    missing = [n for n in REQUIRED_PRESETS if n not in names]
    assert not missing, f"built-in presets missing from {PRESETS}: {', '.join(missing)}"
    return names


def read_yaml(path) -> object:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def preset(name: str) -> dict:
    return read_yaml(PRESETS / f"{name}.yaml")  # type: ignore[return-value]


def gadgets_doc() -> dict:
    return read_yaml(GADGETS)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# (a) Shapes


def check_table(table: object, where: str) -> None:
    assert isinstance(table, dict) and table, f"{where} must be a non-empty mapping"
    for module, names in table.items():
        assert isinstance(module, str) and MODULE_RE.match(module), \
            f"{where}: bad module {module!r}"
        if names == "*":
            continue
        assert isinstance(names, list) and names, f"{where}.{module}: a non-empty list or \"*\""
        for name in names:
            assert isinstance(name, str) and (name == "*" or NAME_RE.match(name)), \
                f"{where}.{module}: bad name {name!r}"
        assert len(names) == len(set(names)), f"{where}.{module}: a name is listed twice"


@pytest.mark.parametrize("name", preset_names())
def test_preset_shape(name: str) -> None:
    doc = preset(name)
    assert isinstance(doc, dict)
    assert set(doc) <= {"version", "description", "allow", "deny"}, sorted(doc)
    assert doc["version"] == 1 and type(doc["version"]) is int
    assert isinstance(doc.get("description"), str) and len(doc["description"]) > 40
    check_table(doc.get("allow"), f"{name}.allow")
    if "deny" in doc:
        check_table(doc["deny"], f"{name}.deny")


@pytest.mark.parametrize("name", preset_names())
def test_preset_is_exact(name: str) -> None:
    """Presets list exact modules and names: no "pkg.*" keys and no "*" names."""
    for module, names in preset(name)["allow"].items():
        assert not module.endswith(".*"), f"{name}: {module} is a wildcard module"
        assert names != "*" and "*" not in names, f"{name}: {module} allows every name"


@pytest.mark.parametrize("name", preset_names())
def test_preset_loads_with_picklegate(name: str) -> None:
    """The real loader also rejects what yaml.safe_load silently accepts (duplicate keys)."""
    policy = load_presets([name], "test")
    assert policy.allow


def test_gadgets_shape() -> None:
    doc = gadgets_doc()
    assert isinstance(doc, dict) and set(doc) == {"version", "gadgets"}
    assert doc["version"] == 1 and type(doc["version"]) is int
    assert isinstance(doc["gadgets"], list) and doc["gadgets"]
    for item in doc["gadgets"]:
        assert isinstance(item, dict), item
        assert set(item) == {"module", "names", "why", "references"}, item
        module = item["module"]
        assert isinstance(module, str) and MODULE_RE.match(module), module
        names = item["names"]
        assert names == "*" or (isinstance(names, list) and names and all(
            isinstance(n, str) and NAME_RE.match(n) for n in names)), (module, names)
        assert isinstance(item["why"], str) and item["why"].strip(), module
        refs = item["references"]
        assert isinstance(refs, list) and refs, module
        assert all(isinstance(r, str) and r.startswith("https://") for r in refs), module
    assert len(load_gadgets()) == len(doc["gadgets"])


# ---------------------------------------------------------------------------------------------
# (b) No preset admits a gadget


@dataclass(frozen=True)
class Pattern:
    module: str
    subtree: bool
    star: bool
    names: frozenset[str]

    @classmethod
    def parse(cls, module: str, names: object) -> Pattern:
        subtree = module.endswith(".*")
        listed = frozenset() if names == "*" else frozenset(names)  # type: ignore[arg-type]
        return cls(module[:-2] if subtree else module, subtree, names == "*" or "*" in listed,
                   listed - {"*"})

    def covers(self, module: str) -> bool:
        return module == self.module or (self.subtree and module.startswith(self.module + "."))


def modules_overlap(a: Pattern, b: Pattern) -> bool:
    return a.covers(b.module) or b.covers(a.module)


def gadgets_admitted(entry: Pattern, gadget: Pattern) -> list[str]:
    """What an allow entry admits of a gadget: "*" in the gadget means every name; "*" in the
    entry means every undotted name; an allowed dotted name reaches through its prefix."""
    if not modules_overlap(entry, gadget):
        return []
    if gadget.star:
        return sorted(entry.names | ({"*"} if entry.star else set()))
    found = []
    for name in gadget.names:
        if name in entry.names or (entry.star and "." not in name) or any(
                allowed.startswith(name + ".") for allowed in entry.names):
            found.append(name)
    return found


def all_gadgets() -> list[tuple[Pattern, str]]:
    return [(Pattern.parse(g["module"], g["names"]), g["why"]) for g in gadgets_doc()["gadgets"]]


@pytest.mark.parametrize("name", preset_names())
def test_no_preset_allows_a_gadget(name: str) -> None:
    gadgets = all_gadgets()
    problems = []
    for module, names in preset(name)["allow"].items():
        entry = Pattern.parse(module, names)
        for gadget, why in gadgets:
            for found in gadgets_admitted(entry, gadget):
                problems.append(f"{module}: {found} is a gadget ({gadget.module}: {why})")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", preset_names())
def test_policy_check_agrees_no_preset_allows_a_gadget(name: str) -> None:
    """The same question through review.admitted, which `policy check` uses."""
    policy = load_presets([name], "test")
    found = [(e.pattern, hit) for e in policy.allow for g in load_gadgets()
             for hit in admitted(e, g)]
    assert not found


@pytest.mark.parametrize("entry,gadget,expected", [
    (("os", ["getcwd"]), ("os", "*"), ["getcwd"]),
    (("os", "*"), ("os", "*"), ["*"]),
    (("os.path", ["join"]), ("os", "*"), []),                     # os.path is another module
    (("importlib.util", ["find_spec"]), ("importlib.*", "*"), ["find_spec"]),
    (("importlib", ["import_module"]), ("importlib.*", "*"), ["import_module"]),
    (("importlibx", ["a"]), ("importlib.*", "*"), []),            # a prefix of the name only
    (("torch.*", "*"), ("torch.hub", "*"), ["*"]),                # the entry covers the gadget
    (("builtins", "*"), ("builtins", ["eval", "exec"]), ["eval", "exec"]),
    (("builtins", ["set"]), ("builtins", ["eval"]), []),
    (("torch", "*"), ("torch", ["UntypedStorage.from_file"]), []),  # "*" is undotted names only
    (("torch", ["UntypedStorage.from_file"]), ("torch", ["UntypedStorage.from_file"]),
     ["UntypedStorage.from_file"]),
    (("os", ["system.__call__"]), ("os", ["system"]), ["system"]),  # reached through system
])
def test_gadget_matching(entry, gadget, expected) -> None:
    assert sorted(gadgets_admitted(Pattern.parse(*entry), Pattern.parse(*gadget))) == expected


def gadget_listed(module: str, name: str) -> bool:
    probe = Pattern(module, False, False, frozenset({name}))
    return any(gadgets_admitted(probe, gadget) for gadget, _ in all_gadgets())


@pytest.mark.parametrize("dotted", [
    "builtins.eval", "builtins.exec", "builtins.compile", "builtins.getattr", "builtins.setattr",
    "builtins.delattr", "builtins.__import__", "builtins.open", "builtins.breakpoint",
    "builtins.input", "builtins.globals", "builtins.vars", "builtins.locals",
    "os.system", "posix.system", "nt.system", "subprocess.Popen", "pty.spawn", "runpy._run_code",
    "importlib.import_module", "importlib.util.module_from_spec", "code.interact",
    "codeop.compile_command", "pickle.loads", "_pickle.loads", "marshal.loads",
    "dill._dill._create_code", "cloudpickle.cloudpickle.subimport", "shelve.open",
    "shutil.rmtree", "socket.socket", "ctypes.CDLL", "webbrowser.open", "sys.modules",
    "operator.attrgetter", "operator.methodcaller", "operator.itemgetter", "functools.partial",
    "types.FunctionType", "types.CodeType", "numpy.testing._private.utils.runstring",
    "numpy.load", "numpy.f2py.crackfortran.getlincoef", "torch.load",
    "torch.storage._load_from_bytes", "torch.hub.load", "torch._inductor.codecache.compile_file",
    "torch.jit.load", "torch.serialization.load", "joblib.load", "pandas.read_pickle",
    "asyncio.subprocess.create_subprocess_shell", "pdb.run", "bdb.Bdb", "timeit.timeit",
    "profile.run", "cProfile.run", "trace.Trace", "multiprocessing.Process",
    "pydoc.pipepager", "doctest.debug_script", "idlelib.run.Executive",
    "joblib.numpy_pickle.NDArrayWrapper", "pkgutil.resolve_name", "uuid._get_command_stdout",
])
def test_gadget_list_covers(dotted: str) -> None:
    module, _, name = dotted.rpartition(".")
    assert gadget_listed(module, name), f"{dotted} is not in data/gadgets.yaml"


# ---------------------------------------------------------------------------------------------
# (c) NumPy 1.x and 2.x spellings


@pytest.mark.parametrize("core", ["numpy.core", "numpy._core"])
@pytest.mark.parametrize("module,name", [("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                                         ("numeric", "_frombuffer")])
def test_numpy_preset_has_both_spellings(core: str, module: str, name: str) -> None:
    allow = preset("numpy")["allow"]
    assert name in allow.get(f"{core}.{module}", []), f"{core}.{module}.{name} missing"


def test_numpy_preset_core_types() -> None:
    allow = preset("numpy")["allow"]
    assert {"ndarray", "dtype"} <= set(allow["numpy"])
    assert "memmap" not in allow["numpy"]          # its constructor opens files


# ---------------------------------------------------------------------------------------------
# Presets against the libraries that write the files (skipped when a library is missing)


def clean(result) -> bool:
    return result.status.value == "clean"


def describe(result) -> str:
    return "; ".join(f"{f.kind.value} {f.module}.{f.name} {f.message}" for f in result.findings)


def scan(data: bytes, names: tuple[str, ...], path: str = "model.bin"):
    from picklegate.scan import scan_bytes

    return scan_bytes(data, load_presets(names, "test"), path=path)


def test_torch_preset_has_the_weights_only_allowlist() -> None:
    pytest.importorskip("torch", reason=TORCH_MISSING)
    from torch._weights_only_unpickler import _get_allowed_globals

    policy: Policy = load_presets(["torch"], "test")
    missing = [key for key in _get_allowed_globals()
               if policy.decide(*key.rpartition(".")[::2]).verdict.value != "allowed"]
    assert not missing, f"torch allows these with weights_only=True: {missing}"


def _torch_artefacts(tmp_path: Path):
    torch = pytest.importorskip("torch", reason=TORCH_MISSING)
    nn = torch.nn
    base = torch.arange(12, dtype=torch.float32)
    state = {
        "f32": torch.randn(3, 4), "f16": torch.randn(2).half(), "bf16": torch.randn(2).bfloat16(),
        "i64": torch.arange(5), "bool": torch.tensor([True, False]),
        "nested": {"a": {"b": torch.zeros(2)}, "list": [torch.ones(1), 3, "x", (1, 2)]},
        "base": base, "view": base[2:8].view(2, 3),
        "model": nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3)).state_dict(),
    }
    for label, kwargs in [("p2", {"pickle_protocol": 2}), ("p4", {"pickle_protocol": 4}),
                          ("legacy", {"_use_new_zipfile_serialization": False})]:
        path = tmp_path / f"{label}.pt"
        torch.save(state, path, **kwargs)
        yield label, path.read_bytes()


def test_torch_preset_covers_torch_save(tmp_path: Path) -> None:
    for label, data in _torch_artefacts(tmp_path):
        result = scan(data, ("torch",), f"{label}.pt")
        assert clean(result), f"{label}: {describe(result)}"


def test_torch_preset_covers_torchscript_except_its_own_classes(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason=TORCH_MISSING)
    nn = torch.nn
    module = torch.jit.script(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3)).eval())
    path = tmp_path / "scripted.pt"
    torch.jit.save(module, path)
    result = scan(path.read_bytes(), ("torch",), "scripted.pt")
    others = [f for f in result.findings
              if (f.module or "").split(".")[0] != "__torch__"]
    assert result.findings and not others, describe(result)


def _numpy_objects():
    import numpy as np
    return [
        np.arange(3.0), np.ones(2, np.float16), np.arange(3, dtype=np.int8),
        np.arange(3, dtype=np.uint64), np.array([True]), np.array([1 + 2j]), np.array(["ab"]),
        np.array([b"ab"]), np.array(["2020-01-01"], dtype="datetime64[D]"),
        np.array([1], dtype="timedelta64[s]"), np.zeros(2, dtype=[("a", "<i4"), ("b", "f8")]),
        np.array([1, "a", None], dtype=object), np.asfortranarray(np.ones((2, 3))),
        np.array(5.0), np.empty((0, 3)), np.arange(3, dtype=">i4"),
        np.ma.masked_array([1, 2], mask=[0, 1]), np.dtype("f8"), type(np.dtype("f8")),
        np.float64(1.5), np.int64(2), np.bool_(True), np.str_("a"), np.datetime64("2020-01-01"),
        np.float64, np.random.RandomState(0), np.random.default_rng(0),
    ]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_preset_covers_numpy_pickles(protocol: int) -> None:
    for obj in _numpy_objects():
        result = scan(pickle.dumps(obj, protocol=protocol), ("numpy",), "array.pkl")
        assert clean(result), f"{type(obj).__name__} at protocol {protocol}: {describe(result)}"


def test_sklearn_preset_names_its_generator_and_version() -> None:
    header = (PRESETS / "sklearn.yaml").read_text("utf-8").split("\nversion:")[0]
    assert "tools/gen_sklearn_preset.py" in header
    assert re.search(r"scikit-learn \d+\.\d+", header)


def test_sklearn_preset_has_every_estimator_of_its_version() -> None:
    import sklearn

    header = (PRESETS / "sklearn.yaml").read_text("utf-8").split("\nversion:")[0]
    # The test extra pins the scikit-learn the preset was generated for; a different one is
    # a failure to act on (regenerate with tools/gen_sklearn_preset.py), not a skip.
    assert f"scikit-learn {sklearn.__version__}," in header, \
        f"the sklearn preset was generated for another scikit-learn than {sklearn.__version__}"
    from sklearn.experimental import enable_halving_search_cv, enable_iterative_imputer  # noqa: F401
    from sklearn.utils import all_estimators

    policy = load_presets(["sklearn"], "test")
    missing = [f"{cls.__module__}.{cls.__qualname__}" for _, cls in all_estimators()
               if policy.decide(cls.__module__, cls.__qualname__).verdict.value != "allowed"]
    assert not missing


def _sklearn_models():
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.ensemble import (GradientBoostingClassifier, HistGradientBoostingClassifier,
                                  RandomForestClassifier)
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import LabelEncoder, OneHotEncoder, StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.RandomState(0)
    X = rng.rand(40, 4)
    y = np.array([0, 1] * 20)
    yr = X[:, 0] * 2.0
    cat = np.array([["a", "x"], ["b", "y"]] * 20, dtype=object)
    texts = ["the cat sat", "the dog ran", "a cat ran", "dogs and cats"] * 5
    return [
        ("LogisticRegression", LogisticRegression().fit(X, y)),
        ("RandomForestClassifier", RandomForestClassifier(n_estimators=2).fit(X, y)),
        ("GradientBoostingClassifier", GradientBoostingClassifier(n_estimators=2).fit(X, y)),
        ("HistGradientBoostingClassifier", HistGradientBoostingClassifier(max_iter=2).fit(X, y)),
        ("DecisionTreeClassifier", DecisionTreeClassifier().fit(X, y)),
        ("KMeans", KMeans(n_clusters=2, n_init=1).fit(X)),
        ("PCA", PCA(2).fit(X)),
        ("StandardScaler", StandardScaler().fit(X)),
        ("OneHotEncoder", OneHotEncoder().fit(cat)),
        ("Pipeline", Pipeline([("s", StandardScaler()), ("m", LogisticRegression())]).fit(X, y)),
        ("ColumnTransformer", ColumnTransformer([("s", StandardScaler(), [0, 1])]).fit(X)),
        ("SVC", SVC().fit(X, y)),
        ("KNeighborsClassifier", KNeighborsClassifier().fit(X, y)),
        ("MLPClassifier", MLPClassifier(max_iter=5).fit(X, y)),
        ("LinearRegression", LinearRegression().fit(X, yr)),
        ("Ridge", Ridge().fit(X, yr)),
        ("TfidfVectorizer", TfidfVectorizer().fit(texts)),
        ("LabelEncoder", LabelEncoder().fit([1, 2, 1])),
    ]


def _serialise(model, writer: str) -> bytes:
    if writer == "joblib":
        import joblib

        buf = io.BytesIO()
        joblib.dump(model, buf)
        return buf.getvalue()
    return pickle.dumps(model, protocol=int(writer[-1]))


@pytest.mark.parametrize("writer", ["joblib", "pickle-2", "pickle-5"])
def test_sklearn_preset_covers_fitted_models(writer: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    failures = []
    for label, model in _sklearn_models():
        result = scan(_serialise(model, writer), ("builtins-safe", "numpy", "sklearn"),
                      f"{label}.joblib")
        if not clean(result):
            failures.append(f"{label}: {describe(result)}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("writer", ["joblib", "pickle-2", "pickle-5"])
def test_sklearn_preset_covers_label_encoder_of_strings(writer: str) -> None:
    from sklearn.preprocessing import LabelEncoder

    model = LabelEncoder().fit(["a", "b", "a"])          # classes_ is a '<U1' array
    result = scan(_serialise(model, writer), ("builtins-safe", "numpy", "sklearn"), "le.joblib")
    assert clean(result), describe(result)
