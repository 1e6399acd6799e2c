"""Compression: number formats, fake quantization and real int8 linears (issue 5, in progress).

```python
from actlab.compress import Quantizer
q = Quantizer.parse("int4:per_group:128:clip=mse")
w_hat = q(weight)                      # quantize-dequantize in float32, same shape and dtype
q.effective_bits(weight.shape)         # 4 + 16/128 with fp16 scales
```
"""

from actlab.compress.formats import FORMAT_NAMES, NF4, NF4_LEVELS, FPFormat, IntFormat, NF4Format, parse_format
from actlab.compress.int8 import Int8Linear, decoder_linears, restore_linears, swap_linears, w8a8_reference
from actlab.compress.quantizer import Granularity, Quantizer, parse_granularity

__all__ = [
    "FORMAT_NAMES", "NF4", "NF4_LEVELS", "FPFormat", "Granularity", "Int8Linear", "IntFormat", "NF4Format", "Quantizer",
    "decoder_linears", "parse_format", "parse_granularity", "restore_linears", "swap_linears", "w8a8_reference",
]
