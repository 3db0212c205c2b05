"""The training loop of one trial, in the order it runs (ARCHITECTURE.md draws it):

- `trial.run_trial(cfg)`: what sweep.py calls; reads top to bottom: setup, fit, evaluate, record.
- `build.build_model`: the model a config asks for; `optim`: optimizer and learning-rate schedule.
- `loop.fit`: the steps, validation, the best weights, early stopping and pruning; `loop.train_step`, `loop.evaluate`.
- `record`: metrics.json, the sweep trial's attributes, the reuse of an equivalent finished trial's result.
- `runtime`: device, precision, seeding, peak memory; `errors`: how a trial fails; `handle`: the sweep trial.
- `pack/`: several LoRA trials trained together over one shared base (`hydra.sweeper.pack.size`), each with the
  same loop pieces (`loop.fit_events`, `loop.apply_step`, `trial.finish`) as a trial alone.

Nothing is imported here, so `tasks.config.checks` can read the option lists of `optim` and `runtime` without
loading the loop (which imports `tasks.config`).
"""
