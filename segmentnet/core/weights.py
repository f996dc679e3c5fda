"""What a file of weights may hold (a checkpoint's `model`, an `encoder_weights` file): names (text)
mapped to dense tensors of the dtypes a model's parameters and buffers have. Imports no model, so
that the models' weight loading and the checkpoints both check with it."""
from __future__ import annotations

import torch


def is_weights(value) -> bool:
    """A state_dict as torch writes one: names (text) -> dense tensors of real numbers in memory. A
    sparse, meta (no data), quantized or complex tensor is refused: loading it into a model fails deep
    inside torch, or casts it silently."""
    return isinstance(value, dict) and all(isinstance(k, str) and is_plain_tensor(t) for k, t in value.items())


def is_plain_tensor(value) -> bool:
    return (isinstance(value, torch.Tensor) and value.layout == torch.strided and not value.is_meta
            and value.dtype in WEIGHT_DTYPES)


# what a model's parameters and buffers are (and torch.save writes of them): anything else (complex, float8,
# bits, quantized) fails inside load_state_dict or is cast silently
WEIGHT_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8, torch.int16,
                 torch.int32, torch.int64, torch.bool}
