"""What several bundles share, written once; bundle configs name these by full path in `_target_`.

- ``readers.H5Reader``: MONAI ``ImageReader`` for the project's h5 files.
- ``datalist.datalist_split``: one split of a datalist (json or in-memory dict) as a list of
  dicts with absolute paths; ``inference_items`` also takes a folder of images.
- ``case_metrics.CaseMetricsWriter``: per-case Dice/Jaccard/HD95/ASD of an evaluator -> JSON + CSV.
- ``two_stream``: ``EpochTwoStreamLoader`` (labeled + unlabeled dict batches, iteration-based
  epochs, per-epoch reseeding) and ``labeled_prepare_batch`` (its labeled part, one network).
- ``stats.loss_terms``: the losses of a trainer's output, for StatsHandler/TensorBoard.
- ``export``: a bundle network exported with ``torch.export`` (TorchScript's successor).
- ``eval_checkpoint.EvalCheckpointLoader``: evaluate.json's loader: ``--eval_checkpoint``, else
  ``select_eval_checkpoint`` (model.pt, else the final checkpoint with a warning).
- ``rng.RNGState``: checkpointable python/numpy/torch RNG state (exact resume).
- ``checkpoint.SafeCheckpointSaver``: MONAI's CheckpointSaver with atomic writes, the previous
  file removed only once its successor is in place.
- ``checkpoint_resume``: ``--resume true`` (newest intact checkpoint), ``--resume_from`` checks,
  ``check_ckpt_dir`` (a new run does not replace another run's files; ``--overwrite true``).
- ``checkpoint_rng.TransformRNGState``: checkpointable random-transform states (exact resume
  with a plain loader).
- ``inferers``: ``ProbabilityNet`` (probability averaging, optional fast inference copy),
  ``la_overlap`` (exact LA strides), ``SliceVolumeInferer`` (2D network over a 3D volume).
- ``reference_inference``: the LA papers' per-window loop, the reference for tests/benchmarks.
- ``networks``: the papers' ``VNet`` (LA 3D) and ``UNet2D`` (SSL4MIS), used by DMD and ATSO.
- ``multiview``: ``RandViewSlabsd`` (slabs of adjacent slices per view axis as channels),
  ``MultiViewInferer`` (MONAI ``SliceInferer`` per view, views fused: ``fuse_views``) and the
  plain per-slice loop it is checked against; ``multiview_trainer.MultiViewTrainer``: one network
  per view, trained in lockstep (ATSO).
- ``meta_schema.json``: local schema for ``monai.bundle verify_metadata --filepath`` (offline).

Modules are not imported here, so importing one does not pull in the others' dependencies.
"""
