"""CDMA's losses: supervised Dice + CE, cross distillation (CDKD) and uncertainty minimisation.

Zhong et al., MICCAI 2023, as the official code (HiLab-git/CDMA ``train_CDMA.py``,
``utils/losses.py``) computes them (spec ``cdma.md`` section 3). Shapes: every branch's logits are
(B, C, H, W) with classes on dim 1 (softmax); the label is (B_l, 1, H, W) with class indices for
the first B_l = ``n_labeled`` images of the batch.

    sup  = 1/K sum_k [0.5 * Dice(softmax(Z_k), y) + 0.5 * CE(Z_k, y)]     labeled images only
    cdkd = 1/K sum_s sum_{t != s} T^2 * mean_pixels KL(softmax(Z_t/T) || softmax(Z_s/T)),
           teacher Z_t detached                                            whole batch
    um   = mean_pixels(-sum_c Pbar_c log(Pbar_c + eps)) / log C,  Pbar = 1/K sum_k softmax(Z_k)
                                                                           whole batch

The unsupervised terms are computed in float32 (log_softmax of z / 10 in fp16 is lossy).
"""

import math
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from sslseg.errors import InputError

KD_TARGETS = ("soft", "hard")
UM_MODES = ("mean", "per_branch")


def _kl_per_pixel(log_p_student: torch.Tensor, log_p_teacher: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of KL(p_teacher || p_student) for log-distributions (B, C, H, W).

    Equal to the reference ``F.kl_div(log_p_s, p_t, reduction="batchmean")`` on (B*H*W, C).
    """
    pixels = log_p_student.numel() // log_p_student.shape[1]
    return F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True) / pixels


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 10.0,
    t2_scale: bool = True,
    target: str = "soft",
) -> torch.Tensor:
    """Distillation of a teacher branch into a student branch, a float32 scalar.

    Args:
        student_logits: (B, C, H, W), receives the gradient.
        teacher_logits: (B, C, H, W), detached here (no gradient reaches the teacher).
        temperature: T of ``softmax(z / T)`` (``"soft"`` only).
        t2_scale: multiply the soft term by T^2 (reference ``KDLoss``; not in the paper).
        target: ``"soft"``: per-pixel mean of KL(softmax(t/T) || softmax(s/T)) (x T^2);
            ``"hard"``: cross-entropy of the student logits against the teacher's argmax (no T).
    """
    assert target in KD_TARGETS, f"kd target must be one of {KD_TARGETS}, got {target!r}"
    assert temperature > 0, f"temperature must be positive, got {temperature}"
    assert student_logits.shape == teacher_logits.shape, (
        f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
        f"{tuple(teacher_logits.shape)}"
    )
    student, teacher = student_logits.float(), teacher_logits.detach().float()
    if target == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=1))
    log_p_student = torch.log_softmax(student / temperature, dim=1)
    log_p_teacher = torch.log_softmax(teacher / temperature, dim=1)
    loss = _kl_per_pixel(log_p_student, log_p_teacher)
    return loss * temperature**2 if t2_scale else loss


def entropy_loss(probs: torch.Tensor, normalize: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Mean per-pixel entropy of probabilities (B, C, H, W), a scalar.

    ``-sum_c p log(p + eps)`` averaged over all pixels of the batch, divided by log C when
    ``normalize`` (reference ``entropy_loss``: 1 for a uniform distribution).
    """
    assert probs.ndim >= 3, f"expected probabilities (B, C, *spatial), got {tuple(probs.shape)}"
    classes = probs.shape[1]
    assert classes >= 2, f"entropy needs at least 2 classes on dim 1, got shape {probs.shape}"
    entropy = -(probs * torch.log(probs + eps)).sum(dim=1).mean()
    return entropy / math.log(classes) if normalize else entropy


class CDMALoss(torch.nn.Module):
    """The three unweighted CDMA terms from K branches' logits; the trainer weights and sums them.

    Args:
        temperature: T of the CDKD softmax (reference 10; ablation ``temperature: 1``).
        kd_t2_scale: multiply the CDKD KL by T^2 (reference; the paper's Eq. 4-5 have no T^2).
        kd_target: ``"soft"`` (KL of softened predictions) or ``"hard"`` (CE against the
            teacher's argmax; Table 2's "CDKD argmax").
        entropy_normalize: divide the entropy by log C (reference; not in the paper's Eq. 6).
        um_mode: ``"mean"`` (entropy of the mean of the K softmaxes, paper L_um) or
            ``"per_branch"`` (mean over branches of each branch's entropy, Table 2's L'_um).
        lambda_dice, lambda_ce: weights of the Dice and CE parts of the supervised term.

    ``forward(logits, label, n_labeled, unsupervised=True)`` returns ``{"sup", "cdkd", "um"}``.
    """

    def __init__(
        self,
        temperature: float = 10.0,
        kd_t2_scale: bool = True,
        kd_target: str = "soft",
        entropy_normalize: bool = True,
        um_mode: str = "mean",
        lambda_dice: float = 0.5,
        lambda_ce: float = 0.5,
    ):
        super().__init__()
        if kd_target not in KD_TARGETS:
            raise InputError(f"kd_target must be one of {KD_TARGETS}, got {kd_target!r}")
        if um_mode not in UM_MODES:
            raise InputError(f"um_mode must be one of {UM_MODES}, got {um_mode!r}")
        if not temperature > 0:
            raise InputError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.kd_t2_scale = bool(kd_t2_scale)
        self.kd_target = kd_target
        self.entropy_normalize = bool(entropy_normalize)
        self.um_mode = um_mode
        # spec section 3: equal to the reference DiceLoss (squared, whole batch, both classes)
        # plus F.cross_entropy, weighted 0.5 / 0.5
        self.dice_ce = DiceCELoss(
            to_onehot_y=True,
            softmax=True,
            squared_pred=True,
            batch=True,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
            lambda_dice=lambda_dice,
            lambda_ce=lambda_ce,
        )

    def forward(
        self,
        logits: Sequence[torch.Tensor],
        label: torch.Tensor,
        n_labeled: int,
        unsupervised: bool = True,
    ) -> Dict[str, torch.Tensor]:
        """Loss terms for one two-stream batch.

        Args:
            logits: K tensors (B, C, H, W), one per branch; the first ``n_labeled`` images of the
                batch are the labeled ones.
            label: (n_labeled, 1, H, W) class indices.
            n_labeled: number of labeled images at the front of the batch, 1 <= n_labeled <= B.
            unsupervised: False returns ``cdkd`` and ``um`` as zeros without computing them
                (supervised baseline).

        Returns:
            ``{"sup": ..., "cdkd": ..., "um": ...}``, scalar tensors. ``sup`` is the mean over
            branches of DiceCE on the labeled part; ``cdkd`` and ``um`` use the whole batch
            (float32). With one branch ``cdkd`` is zero (no pairs).
        """
        logits = list(logits)
        assert len(logits) >= 1, "CDMALoss needs the logits of at least one branch"
        shape = tuple(logits[0].shape)
        assert len(shape) == 4, f"expected branch logits (B, C, H, W), got shape {shape}"
        for k, z in enumerate(logits):
            assert (
                tuple(z.shape) == shape
            ), f"branch {k} logits have shape {tuple(z.shape)}, branch 0 has {shape}"
        batch = shape[0]
        assert (
            1 <= n_labeled <= batch
        ), f"n_labeled must be in [1, batch size {batch}], got {n_labeled}"
        expected_label = (n_labeled, 1, *shape[2:])
        assert tuple(label.shape) == expected_label, (
            f"label shape {tuple(label.shape)} does not match (n_labeled, 1, H, W) = "
            f"{expected_label}"
        )

        sup = torch.stack([self.dice_ce(z[:n_labeled].float(), label) for z in logits]).mean()
        if not unsupervised:
            zero = torch.zeros((), dtype=torch.float32, device=logits[0].device)
            return {"sup": sup, "cdkd": zero, "um": zero.clone()}
        return {"sup": sup, "cdkd": self._cdkd(logits), "um": self._um(logits)}

    def _cdkd(self, logits) -> torch.Tensor:
        """1/K sum_s sum_{t != s} kd(Z_s, Z_t); each branch's log-softmax computed once."""
        branches = len(logits)
        if branches < 2:
            return torch.zeros((), dtype=torch.float32, device=logits[0].device)
        pairs = [(s, t) for s in range(branches) for t in range(branches) if t != s]
        if self.kd_target == "hard":
            log_p = [torch.log_softmax(z.float(), dim=1) for z in logits]
            targets = [z.detach().argmax(dim=1) for z in logits]
            total = sum(F.nll_loss(log_p[s], targets[t]) for s, t in pairs)
        else:
            log_p = [torch.log_softmax(z.float() / self.temperature, dim=1) for z in logits]
            teachers = [lp.detach() for lp in log_p]
            total = sum(_kl_per_pixel(log_p[s], teachers[t]) for s, t in pairs)
            if self.kd_t2_scale:
                total = total * self.temperature**2
        return total / branches

    def _um(self, logits) -> torch.Tensor:
        """Entropy of the mean softmax (``"mean"``) or mean of the branch entropies."""
        probs = [torch.softmax(z.float(), dim=1) for z in logits]
        if self.um_mode == "mean":
            return entropy_loss(torch.stack(probs).mean(dim=0), self.entropy_normalize)
        return torch.stack([entropy_loss(p, self.entropy_normalize) for p in probs]).mean()
