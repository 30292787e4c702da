"""A bidirectional LSTM that is exact on right-padded batches and can be captured in a CUDA graph."""

from __future__ import annotations

import torch
import torch.nn as nn


class ExactBiLSTM(nn.Module):
    """A bidirectional LSTM as two unidirectional cuDNN LSTMs per layer, exact on right-padded batches.

    ``forward(x (B, T, D), lengths (B,) integer tensor) -> (B, T, 2H)``, zero at padded steps. Equal to the packed
    bidirectional LSTM at every real step whatever the padding holds, and graph-capturable (no host-side lengths,
    no packing). Build it with :meth:`from_lstm`.
    """

    def __init__(self, forward_layers, reverse_layers):
        super().__init__()
        self.fwd = nn.ModuleList(forward_layers)
        self.rev = nn.ModuleList(reverse_layers)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM) -> "ExactBiLSTM":
        """Copy the weights of a batch_first bidirectional ``nn.LSTM`` (``weight_ih_l{k}[_reverse]`` etc.).

        Raises:
            ValueError: not bidirectional, not batch_first, or with projections.
        """
        if not (lstm.bidirectional and lstm.batch_first) or getattr(lstm, "proj_size", 0):
            raise ValueError("ExactBiLSTM needs a batch_first bidirectional nn.LSTM without projections")
        ref = lstm.weight_ih_l0
        fwd, rev = [], []
        for k in range(lstm.num_layers):
            in_size = lstm.input_size if k == 0 else 2 * lstm.hidden_size
            for suffix, dest in (("", fwd), ("_reverse", rev)):
                m = nn.LSTM(in_size, lstm.hidden_size, num_layers=1, bias=lstm.bias, batch_first=True)
                m = m.to(device=ref.device, dtype=ref.dtype)
                names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if lstm.bias else [])
                with torch.no_grad():
                    for name in names:
                        getattr(m, f"{name}_l0").copy_(getattr(lstm, f"{name}_l{k}{suffix}"))
                dest.append(m.eval())
        return cls(fwd, rev).eval()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        steps = torch.arange(t, device=x.device).unsqueeze(0)
        lengths = lengths.to(device=x.device, dtype=torch.int64).unsqueeze(1)
        valid = steps < lengths  # (B, T)
        # Self-inverse permutation: reverses the real steps of each clip, leaves padded steps in place.
        idx = torch.where(valid, lengths - 1 - steps, steps).unsqueeze(-1)
        h = x
        side = self._side_stream(x)
        for f, r in zip(self.fwd, self.rev, strict=True):
            if side is None:
                out_f = f(h)[0]  # causal: real steps never see the padding after them
                out_r = r(h.gather(1, idx.expand(-1, -1, h.shape[-1])))[0]
            else:
                # The directions are independent: run the reverse one on a second stream, as cuDNN's bidirectional
                # kernel overlaps them (this also works under CUDA-graph capture: the streams fork and rejoin).
                main = torch.cuda.current_stream(x.device)
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    out_r = r(h.gather(1, idx.expand(-1, -1, h.shape[-1])))[0]
                out_f = f(h)[0]
                main.wait_stream(side)
            out_r = out_r.gather(1, idx.expand(-1, -1, out_r.shape[-1]))
            h = torch.cat([out_f, out_r], dim=-1)
        return h.masked_fill(~valid.unsqueeze(-1), 0.0)  # a select: NaN/Inf in the padding cannot leak through

    def _side_stream(self, x: torch.Tensor):
        if not x.is_cuda:
            return None
        streams = self.__dict__.setdefault("_streams", {})
        if x.device not in streams:
            streams[x.device] = torch.cuda.Stream(device=x.device)
        return streams[x.device]

    def flatten(self) -> "ExactBiLSTM":
        """``flatten_parameters`` on every cuDNN LSTM (contiguous weights after a move)."""
        for m in list(self.fwd) + list(self.rev):
            m.flatten_parameters()
        return self


def exact_bilstm(lstm: nn.LSTM) -> ExactBiLSTM:
    """:class:`ExactBiLSTM` with the weights of a bidirectional, batch_first ``nn.LSTM`` (copied, not shared)."""
    return ExactBiLSTM.from_lstm(lstm)
