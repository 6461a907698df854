"""Training: `config.py` (TrainConfig), `data.py` (decode once, shared; batches by index), `augment.py` (whole
batches on the device), `loss.py` (the detector's loss and prediction), `loop.py` (the loop, DDP, checkpoints).
`python -m model_zoo.train` is its command line."""
