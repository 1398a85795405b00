"""The ATSO procedure without training (``monai_bundles.atso.procedure`` / ``models``).

On a tiny synthetic datalist (10 volumes of 16x16x8: 2 labeled, 7 unlabeled, 1 test): the step
list of each method (which step starts from which weights, which models label which fold, which
folds train the final model), the fold budgets, the fold split (deterministic, disjoint, covering,
balanced, by patient for ACDC-style slice names), the inputs of a step (training items from a
manifest, label jobs), the ledger (prerequisites, another config's run folder) and the checkpoint
of a model of several views. Bad inputs raise ``InputError`` naming the key or file.
"""

import json
from pathlib import Path

import pytest
import torch

from monai_bundles.atso.data import with_reference_labels
from monai_bundles.atso.models import ViewEnsemble, load_model, model_dict, save_model
from monai_bundles.atso.procedure import (
    FOLDS,
    LEDGER,
    METHODS,
    ATSORun,
    case_id,
    group_id,
    split_folds,
)
from monai_bundles.common.multiview import MultiViewInferer
from sslseg.datasets.synthetic import make_volumes
from sslseg.errors import InputError, MissingInputError

N_LABELED, N_UNLABELED = 2, 7


# the step lists of two generations (also the order tests/test_bundle_atso.py checks runs by)
ONE_FOLD_T2_STEPS = [
    "m0",
    "g00/eval",
    "g01/label",
    "g01/student",
    "g01/eval",
    "g02/label",
    "g02/student",
    "final/eval",  # G_T is the final model: no g02/eval
]
ATSO_T2_STEPS = [
    "m0",
    "g00/eval",
    "g01/label",
    "g01/f1",
    "g01/f2",
    "g01/eval",
    "g02/label",
    "g02/f1",
    "g02/f2",
    "g02/eval",
    "g03/label",
    "final",
    "final/eval",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``(dataset_dir, datalist dict)``: 10 volumes -> 1 test, 2 labeled, 7 unlabeled (with
    ``reference_label``)."""
    root = tmp_path_factory.mktemp("atso_unit_data")
    datalist = json.loads(Path(make_volumes(root, num=10, shape=(16, 16, 8))).read_text())
    datalist = with_reference_labels(datalist, str(root))
    assert len(datalist["labeled"]) == N_LABELED and len(datalist["unlabeled"]) == N_UNLABELED
    assert len(datalist["test"]) == 1
    return str(root), datalist


def _run(data, run_dir, **kwargs) -> ATSORun:
    dataset_dir, datalist = data
    kwargs.setdefault("generation_iterations", 90)
    return ATSORun(str(run_dir), datalist, dataset_dir, **kwargs)


def _ids(run: ATSORun) -> list:
    return [s.id for s in run.steps()]


# ---------------------------------------------------------------- step lists of the methods


def test_methods_table():
    assert METHODS == {
        "supervised": (True, 1),
        "self_learning": (False, 1),
        "stso": (True, 1),
        "atso": (True, 2),
    }


def test_supervised_is_m0_and_its_evaluation(data, tmp_path):
    run = _run(data, tmp_path, method="supervised", generations=5, m0_iterations=7)
    assert _ids(run) == ["m0", "final/eval"]
    assert run.generations == 0 and run.folds == [] and run.final_model == "m0"
    assert run.step("m0").iterations == 7 and run.step("m0").init is None
    assert run.step("final/eval").models == ["m0"] and run.step("final/eval").needs == ["m0"]


def test_supervised_accepts_an_empty_unlabeled_split(data, tmp_path):
    dataset_dir, datalist = data
    run = ATSORun(str(tmp_path), {**datalist, "unlabeled": []}, dataset_dir, method="supervised")
    assert run.unlabeled == [] and _ids(run) == ["m0", "final/eval"]


@pytest.mark.parametrize("method,g02_init", [("self_learning", "g01/student"), ("stso", "m0")])
def test_one_fold_methods(data, tmp_path, method, g02_init):
    run = _run(data, tmp_path, method=method, generations=2)
    assert _ids(run) == ONE_FOLD_T2_STEPS
    assert run.num_folds == 1 and run.final_model == "g02/student"
    assert run.step("g01/student").init == "m0"
    assert run.step("g02/student").init == g02_init
    assert run.step("g02/student").needs == sorted({g02_init, "g02/label"})
    # one fold: a round's own model labels R for the next round (no asynchrony)
    assert run.step("g01/label").teachers == {1: ["m0"]}
    assert run.step("g02/label").teachers == {1: ["g01/student"]}
    assert run.step("g02/student").labels == "g02/label" and run.step("g02/student").folds == [1]
    assert run.step("g02/student").iterations == 90  # one fold: the whole generation budget
    assert run.step("final/eval").models == ["g02/student"]
    assert run.folds == [sorted(case_id(i, data[0]) for i in run.unlabeled)]


def test_atso_two_folds_asynchronous_teachers(data, tmp_path):
    run = _run(data, tmp_path, method="atso", generations=2)
    assert _ids(run) == ATSO_T2_STEPS
    assert run.num_folds == 2 and run.reinit and run.final_model == "final"
    for sid in ("g01/f1", "g01/f2", "g02/f1", "g02/f2"):
        assert run.step(sid).init == "m0", sid
    assert run.step("g01/label").teachers == {1: ["m0"], 2: ["m0"]}
    # fold k is labeled by the student trained on the other fold
    assert run.step("g02/label").teachers == {1: ["g01/f2"], 2: ["g01/f1"]}
    assert run.step("g03/label").teachers == {1: ["g02/f2"], 2: ["g02/f1"]}
    assert run.step("g02/f1").labels == "g02/label" and run.step("g02/f1").folds == [1]
    assert run.step("g02/f2").folds == [2]
    assert run.step("g01/f1").needs == ["g01/label", "m0"]
    assert run.step("g02/eval").models == ["g02/f1", "g02/f2"]  # the folds' ensemble
    final = run.step("final")
    assert (final.init, final.labels, final.folds) == ("m0", "g03/label", [1, 2])
    assert final.iterations == 90 and final.needs == ["g03/label", "m0"]
    assert run.step("final/eval").models == ["final"]


def test_atso_algorithm1_drops_round_t_students(data, tmp_path):
    run = _run(data, tmp_path, method="atso", generations=2, final_labels="algorithm1")
    assert _ids(run) == [
        "m0",
        "g00/eval",
        "g01/label",
        "g01/f1",
        "g01/f2",
        "g01/eval",
        "g02/label",
        "final",
        "final/eval",
    ]
    assert run.step("g02/label").teachers == {1: ["g01/f2"], 2: ["g01/f1"]}
    assert run.step("final").labels == "g02/label" and run.step("final").folds == [1, 2]


def test_atso_three_folds_teachers_are_the_other_folds(data, tmp_path):
    run = _run(data, tmp_path, method="atso", generations=1, num_folds=3)
    assert [s for s in _ids(run) if s.startswith("g01/f")] == ["g01/f1", "g01/f2", "g01/f3"]
    assert run.step("g01/label").teachers == {1: ["m0"], 2: ["m0"], 3: ["m0"]}
    assert run.step("g02/label").teachers == {
        1: ["g01/f2", "g01/f3"],
        2: ["g01/f1", "g01/f3"],
        3: ["g01/f1", "g01/f2"],
    }
    assert run.step("final").folds == [1, 2, 3]
    assert sorted(len(f) for f in run.folds) == [2, 2, 3]


def test_atso_without_reinit_continues_each_fold(data, tmp_path):
    run = _run(data, tmp_path, method="atso", generations=2, reinit_from_m0=False)
    assert not run.reinit
    assert run.step("g01/f1").init == "m0" and run.step("g01/f2").init == "m0"
    assert run.step("g02/f1").init == "g01/f1" and run.step("g02/f2").init == "g01/f2"
    assert run.step("g02/f1").needs == ["g01/f1", "g02/label"]
    assert run.step("final").init == "m0"  # final_init is a switch of its own


def test_final_init_last_starts_from_fold1s_last_student(data, tmp_path):
    run = _run(data, tmp_path, method="atso", generations=2, final_init="last")
    assert run.step("final").init == "g02/f1"


def test_eval_generations_off_keeps_only_final_eval(data, tmp_path):
    run = _run(data, tmp_path, method="atso", generations=2, eval_generations=False)
    assert [s for s in _ids(run) if s.endswith("eval")] == ["final/eval"]


# ---------------------------------------------------------------- budgets


def test_proportional_fold_budget(data, tmp_path):
    run = _run(data, tmp_path, method="atso", generation_iterations=90, final_iterations=33)
    sizes = [len(f) for f in run.folds]
    assert sizes == [4, 3]  # 7 cases dealt round-robin: fold 1 gets the extra one
    total = N_LABELED + N_UNLABELED
    for k, size in zip((1, 2), sizes):
        expected = round(90 * (N_LABELED + size) / total)
        assert run.step(f"g01/f{k}").iterations == run.step(f"g02/f{k}").iterations == expected
    assert run.step("g01/f1").iterations == 60 and run.step("g01/f2").iterations == 50
    assert run.step("final").iterations == 33


def test_equal_fold_budget(data, tmp_path):
    run = _run(data, tmp_path, method="atso", fold_budget="equal", generation_iterations=90)
    assert run.step("g01/f1").iterations == run.step("g01/f2").iterations == 90
    assert run.step("final").iterations == 90  # final_iterations None: a generation's


# ---------------------------------------------------------------- folds


def _items(names, folder="/data/slices"):
    return [{"image": f"{folder}/{n}"} for n in names]


def test_split_folds_deterministic_disjoint_covering_balanced():
    items = _items([f"case_{i:03d}.h5" for i in range(11)])
    ids = {case_id(i, "/data") for i in items}
    for k in (2, 3, 4):
        folds = split_folds(items, k, seed=5, base_dir="/data")
        assert folds == split_folds(items, k, seed=5, base_dir="/data")
        assert len(folds) == k
        flat = [c for f in folds for c in f]
        assert len(flat) == len(set(flat)) and set(flat) == ids
        assert max(map(len, folds)) - min(map(len, folds)) <= 1
        assert all(f == sorted(f) for f in folds)
    # the split depends on the seed (some seed gives another one), not on the items' order
    assert any(
        split_folds(items, 2, s, "/data") != split_folds(items, 2, 5, "/data") for s in range(8)
    )
    assert split_folds(items[::-1], 2, 5, "/data") == split_folds(items, 2, 5, "/data")


def test_split_folds_groups_acdc_slices_by_patient():
    slices = {1: 3, 2: 5, 3: 2, 4: 4, 5: 1}  # patient -> number of slices
    names = [
        f"patient{p:03d}_frame{f:02d}_slice_{s}.h5"
        for p, n in slices.items()
        for f in (1, 12)
        for s in range(1, n + 1)
    ]
    items = _items(names)
    assert group_id(items[0]) == "patient001"
    assert case_id(items[0], "/data") == "slices__patient001_frame01_slice_1"
    for seed in range(4):
        folds = split_folds(items, 2, seed=seed, base_dir="/data")
        flat = [c for f in folds for c in f]
        assert sorted(flat) == sorted(case_id(i, "/data") for i in items)
        patients = [{c.split("__")[1].split("_")[0] for c in f} for f in folds]
        assert not patients[0] & patients[1], f"a patient in both folds (seed {seed})"
        assert sorted(len(p) for p in patients) == [2, 3]  # 5 patients: balanced in patients
    with pytest.raises(InputError, match="num_folds 6 exceeds the 5 unlabeled patients"):
        split_folds(items, 6, seed=0, base_dir="/data")


def test_case_id_is_unique_for_same_file_names():
    a = {"image": "/d/2018LA_Seg_Training Set/AAA/mri_norm2.h5"}
    b = {"image": "/d/2018LA_Seg_Training Set/BBB/mri_norm2.h5"}
    assert case_id(a, "/d") == "2018LA_Seg_Training__Set__AAA__mri_norm2"
    assert case_id(a, "/d") != case_id(b, "/d")
    assert group_id(a, "/d") == case_id(a, "/d")  # not ACDC-style: the case is its own group
    assert case_id({"image": "/d/x/case_1.nii.gz"}, "/d") == "x__case_1"


def test_folds_file_is_used(data, tmp_path):
    ids = sorted(case_id(i, data[0]) for i in _run(data, tmp_path / "a").unlabeled)
    path = tmp_path / "folds.json"
    path.write_text(json.dumps({"folds": [ids[5:], ids[:5]]}))
    run = _run(data, tmp_path / "b", folds_file=str(path))
    assert run.folds == [ids[5:], ids[:5]]
    assert [case_id(i, data[0]) for i in run.items_of_fold(1)] == ids[5:]


# ---------------------------------------------------------------- inputs of a step


def test_train_items_take_pseudo_labels_never_r_ground_truth(data, tmp_path):
    run = _run(data, tmp_path, method="atso")
    assert run.train_items("m0") == [
        {"image": i["image"], "label": i["label"]} for i in run.labeled
    ]
    pseudo = run.pseudo_dir("g01/label")
    assert pseudo == tmp_path / "g01" / "pseudo"
    pseudo.mkdir(parents=True)
    cases = {cid: {"file": f"{cid}.h5"} for fold in run.folds for cid in fold}
    (pseudo / "manifest.json").write_text(json.dumps({"cases": cases}))
    run.finish("m0")
    # the ledger is asked before the manifest: the message names the missing step
    with pytest.raises(InputError, match="step 'g01/f2' needs g01/label first"):
        run.train_items("g01/f2")
    run.finish("g01/label")
    items = run.train_items("g01/f2")
    assert items[:N_LABELED] == run.train_items("m0")
    fold2 = run.items_of_fold(2)
    assert [i["image"] for i in items[N_LABELED:]] == [i["image"] for i in fold2]
    assert [i["label"] for i in items[N_LABELED:]] == [
        str(pseudo / f"{case_id(i, data[0])}.h5") for i in fold2
    ]
    truths = {i["reference_label"] for i in run.unlabeled}
    assert len(truths) == N_UNLABELED and not truths & {i["label"] for i in items}
    # the final model trains on every fold
    run.pseudo_dir("g03/label").mkdir(parents=True)
    (run.pseudo_dir("g03/label") / "manifest.json").write_text(json.dumps({"cases": cases}))
    run.finish("g03/label")
    assert len(run.train_items("final")) == N_LABELED + N_UNLABELED
    # a case missing from the manifest is named
    missing = run.folds[0][0]
    del cases[missing]
    (pseudo / "manifest.json").write_text(json.dumps({"cases": cases}))
    with pytest.raises(InputError, match=f"no pseudo label for case '{missing}' of fold 1"):
        run.train_items("g01/f1")


def test_label_jobs_and_paths(data, tmp_path):
    run = _run(data, tmp_path, method="atso")
    jobs = run.label_jobs("g02/label")
    assert [(k, t) for k, t, _ in jobs] == [
        (1, [str(tmp_path / "g01" / "f2" / "model.pt")]),
        (2, [str(tmp_path / "g01" / "f1" / "model.pt")]),
    ]
    assert [[case_id(i, data[0]) for i in items] for _, _, items in jobs] == run.folds
    assert run.init_path("m0") is None
    assert run.init_path("g02/f1") == str(tmp_path / "m0" / "model.pt")
    assert run.model_paths("g01/eval") == [
        str(tmp_path / "g01" / "f1" / "model.pt"),
        str(tmp_path / "g01" / "f2" / "model.pt"),
    ]
    with pytest.raises(InputError, match="'g01/f1' is a train step, not a label step"):
        run.label_jobs("g01/f1")


def test_step_seeds_depend_on_seed_and_step_only(data, tmp_path):
    a, b = _run(data, tmp_path / "a", seed=3), _run(data, tmp_path / "b", seed=3)
    assert a.step_seed("g01/f1") == b.step_seed("g01/f1")
    assert len({a.step_seed(s) for s in _ids(a)}) == len(_ids(a))
    assert _run(data, tmp_path / "c", seed=4).step_seed("g01/f1") != a.step_seed("g01/f1")


# ---------------------------------------------------------------- ledger


def test_ledger_records_steps_and_resumes(data, tmp_path):
    run = _run(data, tmp_path, method="atso")
    assert not run.ledger_path.exists()
    assert run.begin("m0").id == "m0"
    assert (tmp_path / LEDGER).is_file()
    assert json.loads((tmp_path / FOLDS).read_text())["folds"] == run.folds
    assert not run.is_done("m0")
    run.finish("m0", seconds=1.234, iterations=7)
    again = _run(data, tmp_path, method="atso")  # same config: the ledger is reused
    assert again.is_done("m0") and not again.is_done("g01/label")
    entry = again.read_ledger()["steps"]["m0"]
    assert entry == {"status": "done", "kind": "train", "seconds": 1.23, "iterations": 7}


def test_begin_refuses_a_step_whose_prerequisite_is_not_done(data, tmp_path):
    run = _run(data, tmp_path, method="atso")
    run.begin("m0")
    run.finish("m0")
    with pytest.raises(InputError, match="step 'g01/f1' needs g01/label first"):
        run.begin("g01/f1")
    run.finish("g01/label")
    assert run.begin("g01/f1").init == "m0"


def test_ledger_of_another_config_is_refused(data, tmp_path):
    _run(data, tmp_path, method="atso", generation_iterations=90).begin("m0")
    other = _run(data, tmp_path, method="atso", generation_iterations=91)
    with pytest.raises(InputError, match="another configuration") as err:
        other.read_ledger()
    assert "generation_iterations" in str(err.value) and str(tmp_path) in str(err.value)
    assert "m0_iterations" not in str(err.value)
    with pytest.raises(InputError, match="generation_iterations"):
        other.begin("m0")


def test_clear_incomplete_removes_half_written_pseudo_labels(data, tmp_path):
    run = _run(data, tmp_path, method="atso")
    tmp = tmp_path / "g01" / "pseudo.tmp"
    tmp.mkdir(parents=True)
    (tmp / "x.h5").write_bytes(b"half")
    run.clear_incomplete("g01/label")
    assert not tmp.exists()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="atso", num_folds=8), "num_folds 8 exceeds the 7 unlabeled"),
        (dict(method="atso", generations=0), "needs generations >= 1"),
        (dict(method="stso", generations=0), "needs generations >= 1"),
        (dict(method="mean_teacher"), "method must be one of"),
        (dict(final_labels="last"), "final_labels must be one of"),
        (dict(final_init="scratch"), "final_init must be one of"),
        (dict(fold_budget="double"), "fold_budget must be one of"),
        (dict(m0_iterations=0), "m0_iterations must be >= 1"),
        (dict(generation_iterations=0), "generation_iterations must be >= 1"),
        (dict(num_folds=-1), "num_folds must be >= 1"),
    ],
)
def test_bad_switches_name_their_key(data, tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        _run(data, tmp_path, **kwargs)


def test_multiview_inferer_refuses_unknown_fusion_and_even_context():
    with pytest.raises(InputError, match="fusion 'x'"):
        MultiViewInferer(fusion="x")
    with pytest.raises(InputError, match="context_slices 2"):
        MultiViewInferer(context=2)


def test_labeled_case_inside_the_reference_set_is_refused(data, tmp_path):
    dataset_dir, datalist = data
    bad = {
        **datalist,
        "unlabeled": datalist["unlabeled"] + [{"image": datalist["labeled"][0]["image"]}],
    }
    with pytest.raises(InputError, match="1 labeled case.*also in the unlabeled"):
        ATSORun(str(tmp_path), bad, dataset_dir, method="atso")


@pytest.mark.parametrize("method", ["atso", "stso"])
def test_empty_reference_set_is_refused(data, tmp_path, method):
    dataset_dir, datalist = data
    with pytest.raises(InputError, match="split 'unlabeled'.*is empty"):
        ATSORun(str(tmp_path), {**datalist, "unlabeled": []}, dataset_dir, method=method)


def test_bad_folds_files_are_refused(data, tmp_path):
    ids = sorted(case_id(i, data[0]) for i in _run(data, tmp_path / "a").unlabeled)
    cases = {
        "dup": ({"folds": [ids[:4], ids[3:]]}, f"case '{ids[3]}' is in folds 1 and 2"),
        "short": ({"folds": [ids[:4], ids[4:-1]]}, "does not cover the reference set exactly"),
        "unknown": ({"folds": [ids[:4], ids[4:] + ["x"]]}, r"unknown \['x'\]"),
        "three": ({"folds": [ids[:2], ids[2:4], ids[4:]]}, "must be a list of 2 lists"),
        "empty": ({"folds": [ids, []]}, "fold 2 is empty"),
    }
    for name, (content, match) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        with pytest.raises(InputError, match=match) as err:
            _run(data, tmp_path / name, folds_file=str(path))
        assert str(path) in str(err.value), name
    with pytest.raises(MissingInputError, match="folds_file"):
        _run(data, tmp_path / "m", folds_file=str(tmp_path / "absent.json"))


def test_steps_are_named(data, tmp_path):
    run = _run(data, tmp_path, method="atso", generations=1)
    with pytest.raises(InputError, match="no --step given") as err:
        run.step("")
    assert "ATSOWorkflow" in str(err.value) and "g01/f1" in str(err.value)
    with pytest.raises(InputError, match="'g01/student' is not a step of this atso run"):
        run.step("g01/student")


# ---------------------------------------------------------------- models of several views


def _nets(seed: int, n: int = 2) -> list:
    torch.manual_seed(seed)
    return [
        torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.BatchNorm2d(2))
        for _ in range(n)
    ]


def test_save_and_load_model_round_trip(tmp_path):
    src, dst = model_dict(_nets(0), [0, 2]), model_dict(_nets(1), [0, 2])
    assert list(src) == ["view0", "view2"]
    src["view2"][1].running_mean.fill_(0.5)  # buffers travel too
    path = save_model(src, tmp_path / "m" / "model.pt")
    assert set(torch.load(path, weights_only=True)) == {"view0", "view2"}
    load_model(dst, path)
    for key in src:
        for (name, a), b in zip(src[key].state_dict().items(), dst[key].state_dict().values()):
            assert torch.equal(a, b), f"{key}.{name}"


def test_teacher_without_a_view_is_refused_naming_view_and_file(tmp_path):
    path = save_model(model_dict(_nets(0, 1), [0]), tmp_path / "view0_only.pt")
    with pytest.raises(InputError, match="has no view1") as err:
        load_model(model_dict(_nets(1), [0, 1]), path, "teacher of g02/label fold 1")
    assert str(path) in str(err.value) and "teacher of g02/label fold 1" in str(err.value)
    with pytest.raises(MissingInputError, match="absent.pt"):
        load_model(model_dict(_nets(1), [0, 1]), tmp_path / "absent.pt")
    wide = [torch.nn.Sequential(torch.nn.Conv2d(5, 2, 3, padding=1), torch.nn.BatchNorm2d(2))]
    with pytest.raises(InputError, match="view0 does not fit the network"):
        load_model(model_dict(wide, [0]), path)


def test_view_ensemble_averages_the_models_probabilities(tmp_path):
    a, b = model_dict(_nets(0), [0, 1]), model_dict(_nets(1), [0, 1])
    paths = [save_model(a, tmp_path / "a.pt"), save_model(b, tmp_path / "b.pt")]

    def network_fn():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.BatchNorm2d(2))

    ensemble = ViewEnsemble(network_fn, [0, 1], num_models=2, optimize=False).load(paths).eval()
    assert len(ensemble) == 2
    x = torch.rand(2, 3, 8, 8)
    for i, key in enumerate(("view0", "view1")):
        a[key].eval(), b[key].eval()
        with torch.no_grad():
            want = (torch.softmax(a[key](x), 1) + torch.softmax(b[key](x), 1)) / 2
            torch.testing.assert_close(ensemble[i](x), want)
    with pytest.raises(InputError, match="1 files for 2 models"):
        ensemble.load(paths[:1])
    with pytest.raises(InputError, match="no model to load"):
        ViewEnsemble(network_fn, [0], num_models=0)
