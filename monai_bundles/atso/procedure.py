"""The ATSO procedure: methods as switches, the step list, the folds, the ledger and resume.

``ATSORun`` (built by the bundle config as ``@atso_run``) knows, for a run folder and the config's
method keys, every step of the procedure (paper Algorithm 1 and its baselines):

- ``m0``: M0 trained on the labeled set S;
- ``g{g}/label``: pseudo labels of the reference set R made by round g-1's model(s);
- ``g{g}/student`` (one fold) or ``g{g}/f{k}`` (K folds): a student trained on S + R (or R(k));
- ``g{T+1}/label`` and ``final`` (K folds): the final model on S + every fold;
- ``g{g}/eval``, ``final/eval``: test metrics (@E) of each generation's model(s).

A step's inputs (initial weights, teachers, training items, iterations) follow from its id, so
the same step runs identically from the whole-procedure driver (``ATSOWorkflow``) and from
``python -m monai.bundle run ... --step <id>``. The ledger ``atso_state.json`` records finished
steps (atomic writes); a rerun skips them, and refuses a run folder made with another config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import ignite.distributed as idist
import numpy as np

from monai_bundles.common.datalist import datalist_split
from sslseg.errors import InputError, MissingInputError
from sslseg.io import write_json_atomic

logger = logging.getLogger(__name__)

LEDGER = "atso_state.json"
FOLDS = "folds.json"
MODEL = "model.pt"
# method -> (reinit_from_m0, num_folds); supervised = M0 only
METHODS = {
    "supervised": (True, 1),
    "self_learning": (False, 1),
    "stso": (True, 1),
    "atso": (True, 2),
}
FINAL_LABELS = ("refresh", "algorithm1")
FOLD_BUDGETS = ("proportional", "equal")
FINAL_INITS = ("m0", "last")


def sha256(path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def case_id(item: Mapping, base_dir: str = "") -> str:
    """A unique name of a datalist item: its image path relative to ``base_dir`` without the
    suffix, folders joined by ``__`` (``2018LA.../CASE/mri_norm2`` -> ``...__CASE__mri_norm2``)."""
    rel = os.path.relpath(item["image"], base_dir) if base_dir else str(item["image"])
    rel = re.sub(r"(\.nii\.gz|\.nii|\.h5|\.hdf5)$", "", rel)
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", rel.replace(os.sep, "__")).strip("_")


def group_id(item: Mapping, base_dir: str = "") -> str:
    """The unit the folds split by: the patient of an ACDC-style name (``patient003_...``),
    else the case itself, so slices of one patient never land in two folds."""
    name = os.path.basename(str(item["image"]))
    m = re.match(r"(patient\d+)", name)
    return m.group(1) if m else case_id(item, base_dir)


def split_folds(items: Sequence[Mapping], num_folds: int, seed: int, base_dir: str = ""):
    """Deal R's groups (patients/cases), sorted then permuted by ``seed``, round-robin into
    ``num_folds`` folds (sizes in groups differ by at most one).

    Returns:
        a list of ``num_folds`` lists of case ids.
    """
    groups: Dict[str, List[str]] = {}
    for item in items:
        groups.setdefault(group_id(item, base_dir), []).append(case_id(item, base_dir))
    names = sorted(groups)
    if num_folds > len(names):
        raise InputError(
            f"num_folds {num_folds} exceeds the {len(names)} unlabeled patients/cases of the "
            f"reference set: use fewer folds or more unlabeled data"
        )
    order = np.random.default_rng(seed).permutation(len(names))
    folds: List[List[str]] = [[] for _ in range(num_folds)]
    for rank, index in enumerate(order):
        folds[rank % num_folds].extend(groups[names[index]])
    return [sorted(f) for f in folds]


@dataclass
class Step:
    """One step of the procedure.

    ``kind`` is train / label / eval. Train: ``init`` (a train step id or None = from scratch),
    ``labels`` (the label step whose files train it, None = S only), ``folds`` (the folds of R it
    trains on), ``iterations``. Label: ``teachers`` {fold: [train step ids]} (several = their
    ensemble). Eval: ``models`` (train step ids, several = their ensemble).
    """

    id: str
    kind: str
    init: Optional[str] = None
    labels: Optional[str] = None
    folds: List[int] = field(default_factory=list)
    iterations: int = 0
    teachers: Dict[int, List[str]] = field(default_factory=dict)
    models: List[str] = field(default_factory=list)
    needs: List[str] = field(default_factory=list)


class ATSORun:
    """The procedure of one run folder (see the module docstring).

    Args:
        run_dir: the run folder (ledger, folds, one sub-folder per step).
        datalist: datalist json or dict with the ``labeled`` (S), ``unlabeled`` (R) and ``test``
            splits; an R item may carry ``reference_label`` (ground truth read only for @R).
        dataset_dir: base folder of the datalist's relative paths.
        method: ``supervised`` | ``self_learning`` | ``stso`` | ``atso``.
        reinit_from_m0, num_folds: override the method's switches (None: the method's).
        generations: T, the student rounds.
        final_labels: ``refresh`` (round T's students label R for the final model) or
            ``algorithm1`` (the literal Algorithm 1: the final model trains on R_T).
        final_init: ``m0`` or ``last`` (the final model starts from fold 1's last student).
        fold_budget: ``proportional`` (a fold student's iterations scale with its data, so an
            ATSO generation costs what a self-learning one does) or ``equal``.
        m0_iterations, generation_iterations, final_iterations: budgets (final: None = a
            generation's).
        seed: base seed; step seeds derive from (seed, step id). fold_seed: the folds' (None =
            seed). folds_file: a json ``{"folds": [[case ids], ...]}`` instead of the random split.
        eval_generations: evaluate every generation's model(s) on the test split (@E curves).
        m0_checkpoint: a ``model.pt`` of an earlier run's M0 (e.g. ``RUN/m0/model.pt``): step m0
            copies it instead of training, so several methods share one M0 (as the paper's
            identical G0 rows).
        digest: config values that must not change within a run folder (checked on resume).
    """

    def __init__(
        self,
        run_dir: str,
        datalist: Any,
        dataset_dir: str,
        method: str = "atso",
        reinit_from_m0: Optional[bool] = None,
        num_folds: Optional[int] = None,
        generations: int = 2,
        final_labels: str = "refresh",
        final_init: str = "m0",
        fold_budget: str = "proportional",
        m0_iterations: int = 1000,
        generation_iterations: int = 500,
        final_iterations: Optional[int] = None,
        seed: int = 0,
        fold_seed: Optional[int] = None,
        folds_file: str = "",
        eval_generations: bool = True,
        m0_checkpoint: str = "",
        labeled_split: str = "labeled",
        unlabeled_split: str = "unlabeled",
        test_split: str = "test",
        digest: Optional[Mapping] = None,
    ) -> None:
        if method not in METHODS:
            raise InputError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        default_reinit, default_folds = METHODS[method]
        self.method = method
        self.reinit = default_reinit if reinit_from_m0 in (None, "") else bool(reinit_from_m0)
        self.num_folds = int(default_folds if num_folds in (None, "", 0) else num_folds)
        self.generations = 0 if method == "supervised" else int(generations)
        for key, value, allowed in (
            ("final_labels", final_labels, FINAL_LABELS),
            ("final_init", final_init, FINAL_INITS),
            ("fold_budget", fold_budget, FOLD_BUDGETS),
        ):
            if value not in allowed:
                raise InputError(f"{key} must be one of {allowed}, got {value!r}")
        if method != "supervised" and self.generations < 1:
            raise InputError(
                f"method {method!r} needs generations >= 1 (got {generations}); "
                f"generations 0 is method 'supervised' (M0 only)"
            )
        if self.num_folds < 1:
            raise InputError(f"num_folds must be >= 1, got {num_folds}")
        if final_labels == "algorithm1" and self.num_folds > 1 and self.generations < 1:
            raise InputError("final_labels 'algorithm1' needs generations >= 1")
        for key, value in (
            ("m0_iterations", m0_iterations),
            ("generation_iterations", generation_iterations),
        ):
            if int(value) < 1:
                raise InputError(f"{key} must be >= 1, got {value}")
        self.final_labels, self.final_init, self.fold_budget = final_labels, final_init, fold_budget
        self.m0_iterations = int(m0_iterations)
        self.generation_iterations = int(generation_iterations)
        self.final_iterations = int(final_iterations or generation_iterations)
        self.seed = int(seed)
        self.fold_seed = self.seed if fold_seed in (None, "") else int(fold_seed)
        self.eval_generations = bool(eval_generations)
        self.m0_checkpoint = str(m0_checkpoint or "")
        if self.m0_checkpoint and not os.path.isfile(self.m0_checkpoint):
            raise MissingInputError(f"m0_checkpoint {self.m0_checkpoint!r} does not exist")
        self.run_dir = Path(run_dir)
        self.dataset_dir = str(dataset_dir)
        self.labeled = datalist_split(datalist, labeled_split, dataset_dir, keys=("image", "label"))
        self.test = datalist_split(datalist, test_split, dataset_dir, keys=("image", "label"))
        if self.method == "supervised":
            self.unlabeled = datalist_split(
                datalist, unlabeled_split, dataset_dir, keys=("image",), allow_empty=True
            )
        else:
            self.unlabeled = datalist_split(datalist, unlabeled_split, dataset_dir, keys=("image",))
        for item in self.unlabeled:
            truth = item.pop("label", None)  # R's ground truth: read for @R only, never trained on
            if "reference_label" in item:
                truth = os.path.normpath(os.path.join(dataset_dir, item["reference_label"]))
            if truth:
                item["reference_label"] = truth
        self._check_disjoint()
        self.folds = self._folds(folds_file) if self.method != "supervised" else []
        self.digest = dict(digest or {})
        self.digest.update(
            method=self.method,
            reinit_from_m0=self.reinit,
            num_folds=self.num_folds,
            generations=self.generations,
            final_labels=final_labels,
            final_init=final_init,
            fold_budget=fold_budget,
            m0_iterations=self.m0_iterations,
            generation_iterations=self.generation_iterations,
            final_iterations=self.final_iterations,
            seed=self.seed,
            fold_seed=self.fold_seed,
            m0_checkpoint=sha256(self.m0_checkpoint) if self.m0_checkpoint else "",
            labeled=[case_id(i, dataset_dir) for i in self.labeled],
            folds=self.folds,
            test=[case_id(i, dataset_dir) for i in self.test],
        )
        self._steps = {s.id: s for s in self._plan()}

    # ------------------------------------------------------------------ data
    def _check_disjoint(self) -> None:
        labeled = {os.path.realpath(i["image"]) for i in self.labeled}
        inside = [i["image"] for i in self.unlabeled if os.path.realpath(i["image"]) in labeled]
        if inside:
            raise InputError(
                f"{len(inside)} labeled case(s) are also in the unlabeled (reference) split, "
                f"e.g. {inside[0]}: S and R must be disjoint"
            )

    def _folds(self, folds_file: str) -> List[List[str]]:
        ids = [case_id(i, self.dataset_dir) for i in self.unlabeled]
        if not folds_file:
            if self.num_folds == 1:
                return [sorted(ids)]
            return split_folds(self.unlabeled, self.num_folds, self.fold_seed, self.dataset_dir)
        if not os.path.isfile(folds_file):
            raise MissingInputError(f"folds_file {folds_file!r} does not exist")
        with open(folds_file) as f:
            folds = json.load(f).get("folds")
        if not isinstance(folds, list) or len(folds) != self.num_folds:
            raise InputError(
                f"folds_file {folds_file!r}: 'folds' must be a list of {self.num_folds} lists "
                f"of case ids (num_folds)"
            )
        seen: Dict[str, int] = {}
        for k, fold in enumerate(folds):
            if not fold:
                raise InputError(f"folds_file {folds_file!r}: fold {k + 1} is empty")
            for cid in fold:
                if cid in seen:
                    raise InputError(
                        f"folds_file {folds_file!r}: case {cid!r} is in folds {seen[cid] + 1} "
                        f"and {k + 1}"
                    )
                seen[cid] = k
        if set(seen) != set(ids):
            missing, extra = sorted(set(ids) - set(seen)), sorted(set(seen) - set(ids))
            raise InputError(
                f"folds_file {folds_file!r} does not cover the reference set exactly: "
                f"missing {missing[:5]}, unknown {extra[:5]}"
            )
        return [sorted(f) for f in folds]

    def items_of_fold(self, k: int) -> List[Dict[str, str]]:
        """R's items of fold ``k`` (1-based)."""
        wanted = set(self.folds[k - 1])
        return [i for i in self.unlabeled if case_id(i, self.dataset_dir) in wanted]

    # ------------------------------------------------------------------ plan
    def _fold_iterations(self, k: int) -> int:
        if self.num_folds == 1 or self.fold_budget == "equal":
            return self.generation_iterations
        n_total = len(self.labeled) + len(self.unlabeled)
        n_fold = len(self.labeled) + len(self.folds[k - 1])
        return max(1, round(self.generation_iterations * n_fold / n_total))

    def _plan(self) -> List[Step]:
        steps = [Step("m0", "train", iterations=self.m0_iterations)]
        if self.eval_generations and self.method != "supervised":  # supervised: final/eval
            steps.append(Step("g00/eval", "eval", models=["m0"], needs=["m0"]))
        K, T = self.num_folds, self.generations
        prev = {k: "m0" for k in range(1, K + 1)}  # round g-1's model of each fold
        rounds = T - 1 if (K > 1 and self.final_labels == "algorithm1") else T
        for g in range(1, rounds + 1):
            label = f"g{g:02d}/label"
            teachers = {k: self._teachers(prev, k) for k in range(1, K + 1)}
            steps.append(Step(label, "label", teachers=teachers, needs=sorted(set(prev.values()))))
            new = {}
            for k in range(1, K + 1):
                sid = f"g{g:02d}/student" if K == 1 else f"g{g:02d}/f{k}"
                init = "m0" if self.reinit else prev[k]
                steps.append(
                    Step(
                        sid,
                        "train",
                        init=init,
                        labels=label,
                        folds=[k],
                        iterations=self._fold_iterations(k),
                        needs=sorted({init, label}),
                    )
                )
                new[k] = sid
            prev = new
            if self.eval_generations and (K > 1 or g < rounds):  # one fold: G_T is final/eval
                models = sorted(set(prev.values()))
                steps.append(Step(f"g{g:02d}/eval", "eval", models=models, needs=models))
        if K == 1:
            final = prev[1]
        else:
            label = f"g{rounds + 1:02d}/label"
            teachers = {k: self._teachers(prev, k) for k in range(1, K + 1)}
            steps.append(Step(label, "label", teachers=teachers, needs=sorted(set(prev.values()))))
            init = "m0" if self.final_init == "m0" else prev[1]
            steps.append(
                Step(
                    "final",
                    "train",
                    init=init,
                    labels=label,
                    folds=list(range(1, K + 1)),
                    iterations=self.final_iterations,
                    needs=sorted({init, label}),
                )
            )
            final = "final"
        self.final_model = final
        steps.append(Step("final/eval", "eval", models=[final], needs=[final]))
        return steps

    @staticmethod
    def _teachers(prev: Mapping[int, str], k: int) -> List[str]:
        """Fold k's teachers: the other folds' models (their ensemble for K > 2); one fold: its
        own previous model (self-learning / STSO)."""
        others = [prev[j] for j in sorted(prev) if j != k]
        return sorted(set(others)) if others else [prev[k]]

    def steps(self) -> List[Step]:
        """Every step, in the order they run."""
        return list(self._steps.values())

    def step(self, step_id: str) -> Step:
        """The step ``step_id``; an unknown id names the valid ones."""
        if not step_id:
            raise InputError(
                "no --step given: run one step with --step <id> (steps: "
                f"{', '.join(self._steps)}), or the whole procedure with --workflow_name "
                "monai_bundles.atso.workflow.ATSOWorkflow"
            )
        if step_id not in self._steps:
            raise InputError(
                f"step {step_id!r} is not a step of this {self.method} run "
                f"(generations {self.generations}, num_folds {self.num_folds}); steps: "
                f"{', '.join(self._steps)}"
            )
        return self._steps[step_id]

    # ------------------------------------------------------------------ paths
    def step_dir(self, step_id: str) -> Path:
        return self.run_dir / step_id

    def model_path(self, step_id: str) -> Path:
        return self.step_dir(step_id) / MODEL

    def pseudo_dir(self, step_id: str) -> Path:
        return self.step_dir(step_id).parent / "pseudo"

    def step_seed(self, step_id: str) -> int:
        """A seed per step from (seed, step id): a step's draws do not depend on which other
        steps ran in this process."""
        return (self.seed * 1_000_003 + zlib.crc32(step_id.encode())) % (2**31 - 1)

    # ------------------------------------------------------------------ inputs
    def train_items(self, step_id: str) -> List[Dict[str, str]]:
        """The training items of a train step: S with ground truth, plus its folds of R with the
        label step's pseudo-label files (R's ground truth is never used)."""
        step = self.step(step_id)
        items = [{"image": i["image"], "label": i["label"]} for i in self.labeled]
        if step.labels is None:
            return items
        self.check_needs(step_id)  # before the manifest: name the missing step, not a file
        manifest = self.read_manifest(step.labels)
        for k in step.folds:
            for item in self.items_of_fold(k):
                cid = case_id(item, self.dataset_dir)
                entry = manifest["cases"].get(cid)
                if entry is None:
                    raise InputError(
                        f"{self.pseudo_dir(step.labels) / 'manifest.json'} has no pseudo label "
                        f"for case {cid!r} of fold {k}"
                    )
                label = self.pseudo_dir(step.labels) / entry["file"]
                items.append({"image": item["image"], "label": str(label)})
        return items

    def label_jobs(self, step_id: str):
        """``[(fold, teacher model paths, items)]`` of a label step."""
        step = self.step(step_id)
        if step.kind != "label":
            raise InputError(f"step {step_id!r} is a {step.kind} step, not a label step")
        return [
            (k, [str(self.model_path(t)) for t in step.teachers[k]], self.items_of_fold(k))
            for k in sorted(step.teachers)
        ]

    def model_paths(self, step_id: str) -> List[str]:
        """The weights an eval step scores (several: their ensemble)."""
        return [str(self.model_path(m)) for m in self.step(step_id).models]

    def init_path(self, step_id: str) -> Optional[str]:
        init = self.step(step_id).init
        return None if init is None else str(self.model_path(init))

    def read_manifest(self, label_step: str) -> dict:
        path = self.pseudo_dir(label_step) / "manifest.json"
        if not path.is_file():
            raise MissingInputError(f"pseudo-label manifest {path} does not exist")
        with open(path) as f:
            return json.load(f)

    # ------------------------------------------------------------------ ledger
    @property
    def ledger_path(self) -> Path:
        return self.run_dir / LEDGER

    def read_ledger(self) -> dict:
        if not self.ledger_path.is_file():
            return {"version": 1, "config_digest": self.digest, "steps": {}}
        with open(self.ledger_path) as f:
            ledger = json.load(f)
        old = ledger.get("config_digest", {})
        differing = sorted(
            k for k in set(old) | set(self.digest) if old.get(k) != _jsonable(self.digest.get(k))
        )
        if differing:
            raise InputError(
                f"run folder {self.run_dir} was made with another configuration (ledger "
                f"{self.ledger_path}); differing keys: {', '.join(differing)}. Use another "
                f"--run_dir, or the original values to resume"
            )
        return ledger

    def is_done(self, step_id: str) -> bool:
        return self.read_ledger()["steps"].get(step_id, {}).get("status") == "done"

    def check_needs(self, step_id: str) -> dict:
        """Raise ``InputError`` naming the prerequisites of ``step_id`` that the ledger does not
        call done; returns the ledger."""
        step = self.step(step_id)
        ledger = self.read_ledger()
        missing = [n for n in step.needs if ledger["steps"].get(n, {}).get("status") != "done"]
        if missing:
            raise InputError(
                f"step {step_id!r} needs {', '.join(missing)} first (not done in "
                f"{self.ledger_path}); run them, or the whole procedure"
            )
        return ledger

    def begin(self, step_id: str) -> Step:
        """Check that the step's prerequisites are done, write the folds once; returns the step."""
        step = self.step(step_id)
        ledger = self.check_needs(step_id)
        if idist.get_rank() == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not (self.run_dir / FOLDS).is_file():
                write_json_atomic(
                    dict(
                        labeled=self.digest["labeled"],
                        folds=self.folds,
                        test=self.digest["test"],
                        fold_seed=self.fold_seed,
                    ),
                    self.run_dir / FOLDS,
                    indent=1,
                )
            if not self.ledger_path.is_file():
                write_json_atomic(ledger, self.ledger_path, indent=1)
        return step

    def finish(self, step_id: str, seconds: float = 0.0, **info) -> None:
        """Mark ``step_id`` done in the ledger (rank 0), with ``info`` (e.g. dice_R)."""
        if idist.get_rank() != 0:
            return
        ledger = self.read_ledger()
        ledger["steps"][step_id] = dict(
            status="done", kind=self.step(step_id).kind, seconds=round(float(seconds), 2), **info
        )
        write_json_atomic(ledger, self.ledger_path, indent=1)

    def clear_incomplete(self, step_id: str) -> None:
        """Remove a label step's half-written ``pseudo.tmp`` (a redo is deterministic)."""
        tmp = Path(str(self.pseudo_dir(step_id)) + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)


def _jsonable(value):
    return json.loads(json.dumps(value))
