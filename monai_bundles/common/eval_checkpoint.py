"""Which checkpoint an ``evaluate.json`` run loads: the best model, else the final checkpoint.

A training run writes ``model.pt`` (best validation metric) only when validation ran; with
``val_interval`` above the number of epochs there is only ``checkpoint_final.pt``. Evaluating
then falls back to it, saying so, instead of failing on the missing ``model.pt``.
"""

import logging
from pathlib import Path
from typing import Union

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
