"""Training for cnn-bilstm-deploy: data sources (:mod:`train.data`), the training loop (:mod:`train.engine`), the
``python -m train`` CLI and ``python -m train.evaluate``. The model and checkpoint format live in :mod:`runtime`."""
