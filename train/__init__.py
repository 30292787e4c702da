"""Training for cnn-bilstm-deploy: data sources (:mod:`train.data`), the training loop (:mod:`train.engine`), the
``python -m train`` CLI and ``python -m train.evaluate``. The model and checkpoint format live in :mod:`runtime`.

Their parts: ``clips``, ``synthetic`` and ``image_clips`` (the sources behind ``train.data``), ``loop`` (loss and the
train/evaluate passes), ``options`` (optimizer, schedule, device, loaders), ``run_state`` (run folder, resume, RNG)."""
