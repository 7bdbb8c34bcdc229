"""Training separation models: `train(TrainConfig)` and the parts it is made of.

config.py (TrainConfig, YAML), data.py (checked tracks, excerpts, synth source), augment.py
(augmentations + collation), losses.py, schedule.py, ema.py, state.py (resume file),
distributed.py (torchrun/DDP plumbing), trainer.py (the loop). Nothing here prints; the hidden
`stemsplit train` command in cli.py renders progress. Import the submodules you need; this
package module stays empty of imports so `stemsplit --help` never pays for torch.
"""
