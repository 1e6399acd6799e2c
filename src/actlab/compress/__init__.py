"""Compression: number formats, quantizers, outlier transforms, recipes, `compare` and real int8 linears.

```python
from actlab.compress import Quantizer
q = Quantizer.parse("int4:per_group:128:clip=mse")
w_hat = q(weight)                      # quantize-dequantize in float32, same shape and dtype
q.effective_bits(weight.shape)         # 4 + 16/128 with fp16 scales

recipe = Recipe.parse("smoothquant(alpha=0.5) | w8:per_channel a8:per_tensor:static")
qlab = recipe.calibrate(lab, "austen:train", samples=64, seq_len=512)   # a new Lab; `lab` is untouched
table = compare(lab, ["fp", "w8a8", "rotate | w4a4"])                  # one protocol, one table
kv = KVQuant(bits=3, nonuniform=True, outliers=0.01).calibrate(lab)    # KV cache: see actlab.compress.kv
```
"""

from actlab.compress.formats import FORMAT_NAMES, NF4, NF4_LEVELS, FPFormat, IntFormat, NF4Format, parse_format
from actlab.compress.compare import Comparison, compare
from actlab.compress.crossquant import CrossQuantizer, quantization_kernel
from actlab.compress.flatquant import FlatQuant
from actlab.compress.kv import CacheMemory, KVQuant, PackedCache, XQuant
from actlab.compress.kv.compare import KVComparison, kv_compare
from actlab.compress.kv.presets import kv_method
from actlab.compress.int8 import Int8Linear, decoder_linears, restore_linears, swap_linears, w8a8_reference
from actlab.compress.llmfp4 import LLMFP4
from actlab.compress.lowrank import EoRA, SVDCompensation, eora_factors, svd_factors
from actlab.compress.qlinear import QuantLinear
from actlab.compress.quantizer import Granularity, Quantizer, parse_granularity
from actlab.compress.recipe import QuantSpec, Recipe
from actlab.compress.sensitivity import Sensitivity, sensitivity
from actlab.compress.rotations import hadamard, random_orthogonal, rotation
from actlab.compress.transforms import TRANSFORMS, CrossQuant, OutlierTune, Rotate, SmoothQuant

__all__ = [
    "LLMFP4", "TRANSFORMS", "Comparison", "CrossQuant", "CrossQuantizer", "FlatQuant", "OutlierTune", "QuantLinear", "QuantSpec",
    "Recipe", "Rotate", "SmoothQuant", "compare", "hadamard", "quantization_kernel", "random_orthogonal", "rotation",
    "FORMAT_NAMES", "NF4", "NF4_LEVELS", "FPFormat", "Granularity", "Int8Linear", "IntFormat", "NF4Format", "Quantizer",
    "CacheMemory", "KVComparison", "KVQuant", "PackedCache", "XQuant", "kv_compare", "kv_method",
    "EoRA", "SVDCompensation", "Sensitivity", "eora_factors", "sensitivity", "svd_factors",
    "decoder_linears", "parse_format", "parse_granularity", "restore_linears", "swap_linears", "w8a8_reference",
]
