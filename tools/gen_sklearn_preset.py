#!/usr/bin/env python3
"""Generate src/picklegate/presets/sklearn.yaml: the exact globals scikit-learn models need.

The preset is an exact list, never ``"sklearn.*": "*"``: scikit-learn also contains functions
that read files, fetch URLs or run subprocesses (sklearn.datasets, sklearn.utils._testing), and
a wildcard would admit them. The list is the union of

1. every estimator class ``sklearn.utils.all_estimators()`` reports (experimental estimators
   enabled), spelled as pickle records it: ``cls.__module__`` -> ``cls.__qualname__``;
2. every scikit-learn, joblib or scipy global *observed* in pickles of fitted models: the
   common models listed in COMMON_MODELS, and one instance of every estimator above fitted on
   toy data, each written with ``joblib.dump`` and with ``pickle.dumps`` at protocols 2 and 5.

Observed classes are added automatically. An observed global that is *not* a class (a
function) is added only when REVIEWED_FUNCTIONS explains why calling it with arbitrary
arguments is harmless; any other function stops the script, so a new helper always gets a
human review. Globals of other libraries (numpy, builtins, collections, ...) are not part of
this preset: the script checks that the ``numpy`` and ``builtins-safe`` presets cover them and
stops when they do not.

How globals are observed, safely: nothing is ever unpickled for real. The recorder below is a
``pickle.Unpickler`` whose ``find_class`` writes down (module, name) and returns an inert stub
class, and whose ``persistent_load`` returns a stub; it is only run on pickles this script has
just written from objects it built itself. joblib files hold raw array bytes after each
NumpyArrayWrapper, so a pure-Python recorder skips exactly those bytes (sizes come from the
recorded dtype arguments), following joblib's own reader. No global a pickle names is imported.

Usage:
    python tools/gen_sklearn_preset.py            # rewrite the preset
    python tools/gen_sklearn_preset.py --check    # exit 1 when the preset is out of date
"""
from __future__ import annotations

import argparse
import importlib
import io
import math
import pickle
import platform
import sys
import warnings
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "src" / "picklegate" / "presets"
OUTPUT = PRESETS / "sklearn.yaml"

# Modules whose names are never added, even when a class from them is observed. The gadget
# list (src/picklegate/data/gadgets.yaml) explains why; tests/test_presets_data.py checks that
# no preset admits a gadget.
NEVER = ("sklearn.datasets", "sklearn.utils._testing", "sklearn.externals",
         "sklearn.utils._joblib", "joblib.numpy_pickle_compat", "joblib.externals",
         "joblib.memory", "scipy.io")

# Non-class callables that real scikit-learn pickles reference, each reviewed by hand. The
# reason is written next to the name in the YAML. Keys are (module, name).
REVIEWED_FUNCTIONS: dict[tuple[str, str], str] = {
    ("sklearn.metrics._dist_metrics", "newObj"):
        "function: newObj(cls) returns cls.__new__(cls), as NEWOBJ with no arguments; "
        "DistanceMetric pickles use it",
    ("sklearn.neighbors._kd_tree", "newObj"):
        "function: newObj(cls) returns cls.__new__(cls); KDTree.__reduce__ uses it",
    ("sklearn.neighbors._ball_tree", "newObj"):
        "function: newObj(cls) returns cls.__new__(cls); BallTree.__reduce__ uses it",
    ("sklearn.cluster._kmeans", "_kmeans_single_lloyd"):
        "function: one numeric k-means run on arrays; BisectingKMeans keeps it",
    ("sklearn.cluster._kmeans", "_kmeans_single_elkan"):
        "function: one numeric k-means run on arrays; BisectingKMeans keeps it",
    **{("sklearn.feature_selection._univariate_selection", name):
       "function: a univariate feature score computed from arrays (a score_func)"
       for name in ("f_classif", "f_regression", "r_regression", "chi2")},
    **{("sklearn.feature_selection._mutual_info", name):
       "function: a mutual-information feature score computed from arrays (a score_func)"
       for name in ("mutual_info_classif", "mutual_info_regression")},
    ("numpy", "mean"):
        "function: FeatureAgglomeration's default pooling_func; only averages",
    ("scipy._lib.array_api_compat.numpy._aliases", "asarray"):
        "function: scipy's array-API wrapper of numpy.asarray, kept by BSpline objects "
        "(SplineTransformer); the path follows scipy's vendoring",
}

# Also reviewed, as a class of functions: the metric functions behind sklearn's built-in
# scorers (sklearn.metrics.get_scorer(name)._score_func). A fitted search or threshold tuner
# stores its scorer, so pickles name these; each computes a score from arrays of labels or
# predictions and does nothing else. _scorer_functions() lists them from sklearn's registry.
SCORER_REASON = "function: metric of a built-in scorer; computes a score from arrays"

JOBLIB_WRAPPER = ("joblib.numpy_pickle", "NumpyArrayWrapper")
JOBLIB_WRAPPER_REASON = ("joblib's stand-in for an ndarray whose raw bytes follow it in the "
                         "file; only stores shape/dtype/order attributes")


def _scorer_functions() -> dict[tuple[str, str], str]:
    from sklearn.metrics import get_scorer, get_scorer_names

    out = {}
    for scorer_name in get_scorer_names():
        func = getattr(get_scorer(scorer_name), "_score_func", None)
        if func is not None:
            out[(func.__module__, func.__qualname__)] = SCORER_REASON
    return out


def _is_cython_unpickle_helper(module: str, name: str, classes: set[tuple[str, str]]) -> bool:
    """Cython's generated ``__pyx_unpickle_<Cls>(type, checksum, state)``: checks the layout
    checksum, calls ``<Cls>.__new__(type)`` (a TypeError unless type subclasses <Cls>) and sets
    the state. Accepted only for a class <Cls> of the same module that is itself in the preset."""
    prefix = "__pyx_unpickle_"
    return name.startswith(prefix) and (module, name[len(prefix):]) in classes


# ---------------------------------------------------------------------------------------------
# The recorder (research-only: never imports what a pickle names)


class _Stub:
    _pg_global: tuple[str, str] | None = None

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self._pg_args = args
        self._pg_state = None
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Stub()

    def __setstate__(self, state):
        self._pg_state = state

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def add(self, item):
        pass


def _stub_class(module: str, name: str) -> type:
    return type("Stub", (_Stub,), {"_pg_global": (module, name)})


class _Recorder(pickle._Unpickler):  # the pure-Python unpickler, so BUILD can be overridden
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BytesIO, seen: set[tuple[str, str]]) -> None:
        super().__init__(file)
        self._raw = file
        self.seen = seen

    def find_class(self, module: str, name: str) -> type:
        self.seen.add((module, name))
        return _stub_class(module, name)

    def persistent_load(self, pid: object) -> _Stub:
        return _Stub()

    def load_build(self) -> None:
        pickle._Unpickler.load_build(self)
        inst = self.stack[-1]
        if isinstance(inst, _Stub) and inst._pg_global == ("joblib.numpy_pickle",
                                                            "NumpyArrayWrapper"):
            self._skip_array(inst._pg_state)

    dispatch[pickle.BUILD[0]] = load_build

    def _skip_array(self, state: dict) -> None:
        """Skip what joblib's NumpyArrayWrapper.write_array wrote after the wrapper."""
        shape = state["shape"]
        count = math.prod(shape) if shape else 1
        itemsize, hasobject = _dtype_layout(state["dtype"])
        if hasobject:       # a nested pickle stream of the object array
            _Recorder(self._raw, self.seen).load()
            return
        if state.get("numpy_array_alignment_bytes") is not None:
            padding = self._raw.read(1)[0]
            self._raw.read(padding)
        self._raw.read(count * itemsize)


def _dtype_layout(dtype_stub: _Stub) -> tuple[int, bool]:
    """(itemsize, holds Python objects) from a recorded ``numpy.dtype(spec, ...)`` call and the
    state tuple its BUILD received (flags are the 8th item; bit 0 is NPY_ITEM_HASOBJECT)."""
    import numpy as np

    spec = dtype_stub._pg_args[0]
    state = dtype_stub._pg_state
    flags = state[7] if isinstance(state, tuple) and len(state) >= 8 else 0
    itemsize = int(spec[1:]) if spec.startswith("V") else np.dtype(spec).itemsize
    return itemsize, bool(flags & 1)


def record(data: bytes) -> set[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    stream = io.BytesIO(data)
    _Recorder(stream, seen).load()
    if stream.tell() != len(data):
        raise RuntimeError(f"recorder stopped at {stream.tell()} of {len(data)} bytes")
    return seen


# ---------------------------------------------------------------------------------------------
# Artefacts


def _datasets():
    import numpy as np

    rng = np.random.RandomState(0)
    X = rng.randint(0, 5, size=(60, 4)).astype(float) + rng.rand(60, 4)   # non-negative
    y2 = np.array([0, 1] * 30)
    y3 = np.array([0, 1, 2] * 20)
    yr = X[:, 0] * 2.0 + rng.rand(60)
    Y2 = np.c_[yr, X[:, 1]]
    Ymulti = np.c_[y2, 1 - y2, y2]
    texts = ["the cat sat", "the dog ran", "a cat ran", "dogs and cats play"] * 15
    dicts = [{"a": 1.0, "b": i % 3} for i in range(60)]
    images = rng.rand(4, 8, 8)
    Xcat = np.array([["a", "x"], ["b", "y"], ["a", "y"]] * 20, dtype=object)
    # Ordered from the most common input to the least; the first that fits wins.
    return [(X, y3), (X, y2), (X, yr), (X, Y2), (X, Ymulti), (X, None), (texts, y2),
            (texts, None), (dicts, None), (Xcat, y2), (Xcat, None), (X[:, 0], yr),
            (images, None), (y3, None), (Ymulti, None), (X @ X.T, None)]


def _common_models():
    """The models most often shipped as files, with variants that reach other helpers."""
    import numpy as np
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.cluster import BisectingKMeans, KMeans
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor,
                                  HistGradientBoostingClassifier,
                                  HistGradientBoostingRegressor, RandomForestClassifier)
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.frozen import FrozenEstimator
    from sklearn.feature_selection import (SelectKBest, SelectPercentile, chi2, f_classif,
                                           f_regression, mutual_info_classif,
                                           mutual_info_regression, r_regression)
    from sklearn.linear_model import (LinearRegression, LogisticRegression, Ridge,
                                      SGDClassifier, SGDRegressor)
    from sklearn.model_selection import GridSearchCV
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import LabelEncoder, OneHotEncoder, StandardScaler
    from sklearn.svm import SVC, LinearSVC
    from sklearn.tree import DecisionTreeClassifier

    sets = _datasets()
    X, y3 = sets[0]
    y2, yr, texts, Xcat = sets[1][1], sets[2][1], sets[6][0], sets[9][0]
    models = [
        ("LogisticRegression", LogisticRegression(max_iter=500), X, y2),
        ("LogisticRegression multiclass", LogisticRegression(max_iter=500), X, y3),
        ("RandomForestClassifier", RandomForestClassifier(n_estimators=3, random_state=0), X, y2),
        ("GradientBoostingClassifier", GradientBoostingClassifier(n_estimators=3), X, y2),
        ("GradientBoostingClassifier multiclass", GradientBoostingClassifier(n_estimators=3), X,
         y3),
        ("HistGradientBoostingClassifier", HistGradientBoostingClassifier(max_iter=3), X, y2),
        ("HistGradientBoostingClassifier multiclass", HistGradientBoostingClassifier(max_iter=3),
         X, y3),
        ("DecisionTreeClassifier", DecisionTreeClassifier(), X, y2),
        ("KMeans", KMeans(n_clusters=2, n_init=1, random_state=0), X, None),
        ("PCA", PCA(2), X, None),
        ("StandardScaler", StandardScaler(), X, None),
        ("OneHotEncoder", OneHotEncoder(handle_unknown="ignore"), Xcat, None),
        ("Pipeline", Pipeline([("s", StandardScaler()), ("m", LogisticRegression())]), X, y2),
        ("ColumnTransformer", ColumnTransformer([("num", StandardScaler(), [0, 1]),
                                                ("pca", PCA(1), slice(2, 4))]), X, None),
        ("SVC", SVC(probability=True), X, y2),
        ("KNeighborsClassifier", KNeighborsClassifier(), X, y2),
        ("KNeighborsClassifier kd_tree", KNeighborsClassifier(algorithm="kd_tree"), X, y2),
        ("KNeighborsClassifier ball_tree", KNeighborsClassifier(algorithm="ball_tree"), X, y2),
        ("MLPClassifier", MLPClassifier(max_iter=20), X, y2),
        ("LinearRegression", LinearRegression(), X, yr),
        ("Ridge", Ridge(), X, yr),
        ("TfidfVectorizer", TfidfVectorizer(), texts, None),
        ("LabelEncoder", LabelEncoder(), ["a", "b", "a"], None),
        ("Pipeline(TfidfVectorizer, SVC)", Pipeline([("t", TfidfVectorizer()), ("m", SVC())]),
         texts, y2),
        ("Pipeline(TfidfVectorizer, LinearSVC)",
         Pipeline([("t", TfidfVectorizer()), ("m", LinearSVC())]), texts, y2),
        ("GridSearchCV(LogisticRegression)",
         GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=2), X, y2),
        ("CalibratedClassifierCV", CalibratedClassifierCV(cv=2), X, y2),
        ("OneVsRestClassifier with a constant label column",
         OneVsRestClassifier(LogisticRegression()), X, np.c_[y2, np.ones_like(y2)]),
        ("FrozenEstimator(LogisticRegression)",
         FrozenEstimator(LogisticRegression().fit(X, y2)), X, y2),
        ("SGDClassifier", SGDClassifier(), X, y2),
        ("SGDRegressor", SGDRegressor(), X, yr),
    ]
    for loss in ("absolute_error", "huber", "quantile"):
        models.append((f"GradientBoostingRegressor loss={loss}",
                       GradientBoostingRegressor(n_estimators=3, loss=loss), X, yr))
    for loss in ("absolute_error", "gamma", "poisson", "quantile"):
        kwargs = {"quantile": 0.5} if loss == "quantile" else {}
        models.append((f"HistGradientBoostingRegressor loss={loss}",
                       HistGradientBoostingRegressor(max_iter=3, loss=loss, **kwargs),
                       X, yr + 1.0))
    for score_func in (chi2, f_classif, mutual_info_classif, r_regression):
        models.append((f"SelectKBest({score_func.__name__})",
                       SelectKBest(score_func, k=2), X, y2))
    for score_func in (f_regression, mutual_info_regression):
        models.append((f"SelectPercentile({score_func.__name__})",
                       SelectPercentile(score_func), X, yr))
    for algorithm in ("lloyd", "elkan"):
        models.append((f"BisectingKMeans algorithm={algorithm}",
                       BisectingKMeans(n_clusters=3, algorithm=algorithm, random_state=0),
                       X, None))
    for loss in ("hinge", "log_loss", "modified_huber", "squared_hinge", "perceptron"):
        models.append((f"SGDClassifier loss={loss}", SGDClassifier(loss=loss), X, y2))
    for loss in ("squared_error", "huber", "epsilon_insensitive"):
        models.append((f"SGDRegressor loss={loss}", SGDRegressor(loss=loss), X, yr))
    return models


def _fit(est, X, y):
    import numpy as np

    np.random.seed(0)       # estimators with random_state=None draw from the global RNG
    name = type(est).__name__
    if name in ("LabelEncoder", "LabelBinarizer", "MultiLabelBinarizer"):
        return est.fit(X)
    return est.fit(X) if y is None else est.fit(X, y)


def _every_estimator(estimators):
    """One fitted instance per estimator class, where one of the toy datasets fits."""
    try:
        from sklearn.utils._test_common.instance_generator import _construct_instances
    except ImportError:                                # private API: fall back to defaults
        def _construct_instances(cls):
            yield cls()
    fitted, failed = [], []
    for name, cls in estimators:
        try:
            instance = next(iter(_construct_instances(cls)))
        except Exception:                              # noqa: BLE001 - skipped estimators
            failed.append(name)
            continue
        for X, y in _datasets():
            from sklearn.base import clone
            est = clone(instance)
            try:
                _fit(est, X, y)
            except Exception:                          # noqa: BLE001 - try the next dataset
                continue
            fitted.append((f"{name} (fitted)", est))
            break
        else:
            failed.append(name)
            fitted.append((f"{name} (unfitted)", instance))
    return fitted, failed


def observe(estimators):
    """{(module, name): [artefact labels]} over every artefact."""
    import joblib

    artefacts = []
    for label, est, X, y in _common_models():
        artefacts.append((label, _fit(est, X, y)))
    everything, failed = _every_estimator(estimators)
    artefacts.extend(everything)
    # What a fitted GridSearchCV(scoring=name) or TunedThresholdClassifierCV keeps as scorer_.
    from sklearn.metrics import get_scorer, get_scorer_names
    artefacts.extend((f"scorer {name!r}", get_scorer(name)) for name in get_scorer_names())
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for label, obj in artefacts:
        streams = []
        buf = io.BytesIO()
        joblib.dump(obj, buf)
        streams.append(buf.getvalue())
        streams.extend(pickle.dumps(obj, protocol=p) for p in (2, 5))
        found: set[tuple[str, str]] = set()
        for data in streams:
            found |= record(data)
        for g in found:
            seen[_py3_name(*g)].append(label)
    return seen, failed


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """The name CPython imports for a protocol < 3 pickle (the recorder sees the raw one)."""
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    from picklegate.names import map_python2_name

    return map_python2_name(module, name, 2)


# ---------------------------------------------------------------------------------------------
# Classification


def _resolve(module: str, qualname: str):
    """Import a scikit-learn / joblib / scipy module (the libraries themselves) and walk the
    qualname. Only called for modules of those libraries."""
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _own(module: str) -> bool:
    return module == "sklearn" or module.startswith(("sklearn.", "joblib.", "scipy."))


def _never(module: str) -> bool:
    return any(module == n or module.startswith(n + ".") for n in NEVER)


def _load_preset_names(*names: str) -> set[tuple[str, str]] | None:
    """Exact (module, name) pairs of other presets, for the coverage check (no wildcards)."""
    import yaml

    out: set[tuple[str, str]] = set()
    for preset in names:
        data = yaml.safe_load((PRESETS / f"{preset}.yaml").read_text("utf-8"))
        for module, listed in (data.get("allow") or {}).items():
            out.update((module, n) for n in listed)
    return out


def classify(estimators, seen):
    entries: dict[str, dict[str, str]] = defaultdict(dict)   # module -> name -> comment
    problems: list[str] = []
    for _, cls in estimators:
        module, name = cls.__module__, cls.__qualname__
        if _resolve(module, name) is not cls:
            problems.append(f"{module}.{name} does not resolve to itself; pickle cannot use it")
        elif not _never(module):
            entries[module][name] = ""
    classes = {(m, n) for m, names in entries.items() for n in names}
    others = _load_preset_names("numpy", "builtins-safe")
    reviewed = {**_scorer_functions(), **REVIEWED_FUNCTIONS}
    # Classes first, so Cython helpers can refer to classes observed in the same run.
    ordered = sorted(seen.items(), key=lambda kv: kv[0][1].startswith("__pyx_unpickle_"))
    for (module, name), labels in ordered:
        where = ", ".join(sorted(set(labels))[:2]) + (", ..." if len(set(labels)) > 2 else "")
        if not _own(module):
            if (module, name) in reviewed and (module, name) not in others:
                entries[module][name] = reviewed[(module, name)]
            elif (module, name) not in others:
                problems.append(f"{module}.{name} (in {where}) is covered by neither the numpy "
                                f"nor the builtins-safe preset")
            continue
        if _never(module):
            problems.append(f"{module}.{name} (in {where}) is in a module this preset never "
                            f"admits ({', '.join(NEVER)})")
            continue
        if (module, name) == JOBLIB_WRAPPER:
            entries[module][name] = JOBLIB_WRAPPER_REASON
            continue
        if module.startswith("joblib."):
            problems.append(f"{module}.{name} (in {where}) is a joblib global nobody reviewed")
            continue
        obj = _resolve(module, name)
        if isinstance(obj, type):
            if name not in entries[module]:
                entries[module][name] = f"observed: {where}"
                classes.add((module, name))
        elif (module, name) in reviewed:
            entries[module][name] = reviewed[(module, name)]
        elif _is_cython_unpickle_helper(module, name, classes):
            entries[module][name] = ("function: Cython auto-pickle helper; only calls "
                                     f"{name[len('__pyx_unpickle_'):]}.__new__ and sets state")
        else:
            problems.append(f"{module}.{name} (in {where}) is not a class and has no review in "
                            f"REVIEWED_FUNCTIONS; inspect it before adding it")
    return entries, problems


# ---------------------------------------------------------------------------------------------
# Output


DESCRIPTION = (
    "What joblib.dump and pickle.dumps of fitted scikit-learn models reference beyond the numpy "
    "and builtins-safe presets (use it together with both): every estimator class "
    "sklearn.utils.all_estimators() lists, the internal helper classes observed in pickles of "
    "fitted models (trees, loss objects, binary trees, predictors, distance metrics), a few "
    "reviewed pickling helper functions, and joblib's NumpyArrayWrapper. It deliberately lists "
    "exact names instead of sklearn.*, because scikit-learn also holds functions that read "
    "files, fetch URLs or run subprocesses (sklearn.datasets, sklearn.utils._testing), and it "
    "leaves out joblib's legacy NDArrayWrapper/ZNDArrayWrapper, which load side files by name. "
    "Custom callables in a model (FunctionTransformer(func=...), a metric function) are not "
    "covered and must be allowed explicitly.")


def render(entries, versions) -> str:
    lines = [
        "# GENERATED FILE - do not edit by hand. Regenerate with:",
        "#     python tools/gen_sklearn_preset.py",
        f"# Generated against scikit-learn {versions['sklearn']}, joblib {versions['joblib']}, "
        f"numpy {versions['numpy']}, scipy {versions['scipy']}, Python {versions['python']}.",
        "#",
        "# Names without a comment are estimator classes from sklearn.utils.all_estimators().",
        "# 'observed: ...' marks helper classes seen in pickles of those fitted models.",
        "# 'function: ...' marks the only non-class callables, each reviewed in the script.",
        "# Use with the numpy and builtins-safe presets: extends: [builtins-safe, numpy, sklearn]",
        "",
        "version: 1",
        f"description: {_quote(DESCRIPTION)}",
        "allow:",
    ]
    for module in sorted(entries):
        names = entries[module]
        if not names:
            continue
        lines.append(f"  {module}:")
        for name in sorted(names):
            comment = names[name]
            lines.append(f"    - {name}" + (f"   # {comment}" if comment else ""))
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the file differs from what would be written")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    import joblib
    import numpy
    import scipy
    import sklearn
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.utils import all_estimators

    estimators = sorted(all_estimators(), key=lambda pair: pair[0])
    seen, failed = observe(estimators)
    entries, problems = classify(estimators, seen)
    if failed:
        print(f"note: {len(failed)} estimators could not be fitted on the toy data and were "
              f"pickled unfitted: {', '.join(failed)}", file=sys.stderr)
    if problems:
        print("gen_sklearn_preset: cannot write the preset:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    versions = {"sklearn": sklearn.__version__, "joblib": joblib.__version__,
                "numpy": numpy.__version__, "scipy": scipy.__version__,
                "python": platform.python_version()}
    text = render(entries, versions)
    count = sum(len(v) for v in entries.values())
    if args.check:
        current = args.output.read_text("utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run tools/gen_sklearn_preset.py",
                  file=sys.stderr)
            return 1
        print(f"{args.output} is up to date ({count} names)")
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}: {count} names in {len(entries)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
