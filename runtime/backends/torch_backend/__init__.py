"""PyTorch backend: the eager fp32 reference, and a fast GPU path for the same checkpoint.

Eager (``fast=False``, the default on CPU): the checkpoint's model as trained, packed sequences for padded batches.

Fast (``fast=True``, the default on CUDA):

* CNN: a deep copy with every conv-BN pair folded into the conv (:func:`.fold.fold_conv_bn`; torchvision's ResNets,
  MobileNetV3 and EfficientNet alike), in float16 and channels_last on CUDA.
* BiLSTM, two exact forms, float32 by default (``precision="fp16-all"`` runs it and the heads in float16):
  - every clip of the call is T frames long (no ``lengths``, or all equal to T) and T is one of the time buckets:
    cuDNN's fused bidirectional LSTM, the fastest form. Batch rows added to reach a bucket are independent of the
    real rows, so this is exact (the time axis is not padded in this form);
  - clips of mixed lengths, or a T between buckets: :class:`.bilstm.ExactBiLSTM` (:mod:`.bilstm`), the bidirectional weights
    split into two unidirectional cuDNN LSTMs per layer. The reverse direction runs on per-clip reversed inputs
    (index ``len_b - 1 - t`` for ``t < len_b``), so padding never enters either direction: padding time up to a
    bucket is exact, and unlike packed sequences it can be captured in a CUDA graph. It costs more than the fused
    kernel (two sequential chains).
* CUDA graphs (:class:`.runner.Bucket`), one per (batch, time) bucket (:data:`.runner.BATCH_BUCKETS`,
  :data:`.runner.TIME_BUCKETS`), captured on first use with static input/output buffers: an input is copied into the
  smallest bucket that holds it (padded clips get length 1, padded steps are masked) and the outputs are sliced back
  to the input's shape. A shape beyond the largest bucket runs the same fast modules eagerly (exact, just without the
  graph's launch savings) and logs that once. So the buckets a runner can build are bounded (two per (batch, time)
  bucket pair), and at most :data:`.runner.MAX_BUCKETS` are kept: the least recently used one is dropped (with its
  graph and buffers) to make room, and rebuilt if its shape comes back.

On CPU, ``fast=True`` gives the folded float32 CNN and :class:`.bilstm.ExactBiLSTM` without graphs (for testing the padding
logic). ``fast`` sets ``torch.backends.cudnn.benchmark = True`` (process-wide) on CUDA.

The runner is :class:`TorchRunner` (:mod:`.runner`). Threading: the eager path runs calls concurrently; the fast
path owns static buffers and graphs, so its calls are serialised by the runner's lock.
"""
