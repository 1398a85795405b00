"""Which checkpoint an ``evaluate.json`` run loads: the best model, else the final checkpoint.

A training run writes ``model.pt`` (best validation metric) only when validation ran; with
``val_interval`` above the number of epochs there is only ``checkpoint_final.pt``. Evaluating
then falls back to it, saying so, instead of failing on the missing ``model.pt``.
``EvalCheckpointLoader`` (evaluate.json's loader) chooses the file when the evaluation starts, so
building a workflow (``check_properties``) needs no checkpoint yet.
"""

import logging
from pathlib import Path
from typing import Union

from monai.handlers import CheckpointLoader

from sslseg.errors import MissingInputError

logger = logging.getLogger(__name__)


def select_eval_checkpoint(
    ckpt_dir: Union[str, Path], best: str = "model.pt", final: str = "checkpoint_final.pt"
) -> str:
    """``ckpt_dir/best`` if it exists, else ``ckpt_dir/final`` with a warning.

    Both hold the networks under the keys an evaluate config loads (``model_dict`` / ``model``).
    Raises ``MissingInputError`` naming the folder and both names when neither exists.
    """
    folder = Path(ckpt_dir)
    if (folder / best).is_file():
        return str(folder / best)
    if (folder / final).is_file():
        logger.warning(
            f"{folder / best} does not exist (validation never ran in training, e.g. "
            f"val_interval > epochs): evaluating the final checkpoint {folder / final}"
        )
        return str(folder / final)
    raise MissingInputError(
        f"no checkpoint to evaluate in ckpt_dir {str(folder)!r}: neither {best} (best "
        f"validation) nor {final}; train first, set ckpt_dir, or give --eval_checkpoint <file>"
    )


class EvalCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` loading ``load_path`` if given (``--eval_checkpoint``), else
    :func:`select_eval_checkpoint` of ``ckpt_dir``, chosen when the engine starts.

    Args:
        load_dict: objects to load, as ``CheckpointLoader``.
        ckpt_dir: training run's checkpoint folder (used when ``load_path`` is empty).
        load_path: a checkpoint file; "" to choose from ``ckpt_dir``.
        kwargs: other ``CheckpointLoader`` arguments (``map_location``, ``strict``, ...).
    """

    def __init__(self, load_dict: dict, ckpt_dir: Union[str, Path] = "", load_path="", **kwargs):
        super().__init__(load_path=str(load_path or ""), load_dict=load_dict, **kwargs)
        self.ckpt_dir = ckpt_dir

    def __call__(self, engine) -> None:
        if not self.load_path:
            self.load_path = select_eval_checkpoint(self.ckpt_dir)
        elif not Path(self.load_path).is_file():
            raise MissingInputError(f"eval_checkpoint {self.load_path!r} does not exist")
        self.logger.info(f"evaluating checkpoint {self.load_path}")
        super().__call__(engine)
