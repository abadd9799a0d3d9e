"""Quantized layers: PyTorch modules that compute exactly what the HLS C++ and the RTL compute.

Every layer casts its input to its ``input`` format on entry, its weights and
bias to theirs, computes exactly (or, for a narrow accumulator, step by step
as the HLS loop does) and casts its result to its ``output`` format. The
semantics are documented per class; :mod:`qfx.nn.accumulate` states the
multiply-accumulate contract and why the fast path is exact.

=======================  =============================================================
module                   contents
=======================  =============================================================
``qfx.nn.config``        :class:`LayerConfig`: the per-layer format set and options
``qfx.nn.quantizer``     :class:`TensorQuantizer`: one tensor's cast, learnable binary
                         point, calibration, overflow count
``qfx.nn.accumulate``    product / accumulator types, the step-by-step loop
``qfx.nn.linear``        :class:`QLinear`
``qfx.nn.conv``          :class:`QConv2d`
``qfx.nn.norm``          :class:`QBatchNorm2d`, :func:`fold_batchnorm`
``qfx.nn.activation``    :class:`QReLU`, :class:`QReLU6`, :class:`QLeakyReLU`
``qfx.nn.add``           :class:`QAdd`
``qfx.nn.pool``          :class:`QMaxPool2d`, :class:`QAvgPool2d`
``qfx.nn.flatten``       :class:`QFlatten`
``qfx.nn.ops``           :class:`QBatchNorm1d`, :class:`QGlobalAvgPool2d`, :class:`QCat`,
                         :class:`QClamp`, :class:`QSub`, :class:`QMul`, :class:`QZeroPad2d`,
                         :class:`QUpsample`
``qfx.nn.layernorm``     :class:`QLayerNorm` (integer statistics, :mod:`qfx.layernorm`)
``qfx.nn.matmul``        :class:`QMatMul` (two activations), :class:`QPermute`, :class:`QReshape`
``qfx.nn.plan``          :func:`refresh_compile_plan`, :func:`compile_model`: compiled
                         (torch.compile) forward passes, one graph
``qfx.nn.table``         lookup-table activations: :class:`QSigmoid`, :class:`QTanh`,
                         :class:`QSiLU`, :class:`QGELU`, :class:`QHardsigmoid`,
                         :class:`QHardswish` (:class:`QTable`)
=======================  =============================================================
"""

from .accumulate import auto_accumulator, lmul_product_type, minifloat_hull, product_type
from .activation import QLeakyReLU, QReLU, QReLU6
from .add import QAdd
from .base import QuantizedModule, freeze, reset_overflow_counts, set_track_overflow
from .config import FORMAT_KEYS, LEARNABLE_KEYS, OPTION_KEYS, LayerConfig, as_config
from .conv import QConv2d
from .conv1d import QAvgPool1d, QConv1d, QMaxPool1d
from .flatten import QFlatten
from .layernorm import QLayerNorm, layernorm_problem
from .linear import QLinear
from .matmul import QMatMul, QPermute, QReshape, matmul_problem
from .norm import QBatchNorm2d, fold_batchnorm
from .ops import QBatchNorm1d, QCat, QClamp, QGlobalAvgPool2d, QMul, QSub, QUpsample, QZeroPad2d, upsample_problem
from .plan import CompilePlanError, compile_model, refresh_compile_plan
from .pool import QAvgPool2d, QMaxPool2d
from .quantizer import TensorQuantizer
from .softmax import QSoftmax
from .table import QGELU, QHardsigmoid, QHardswish, QSigmoid, QSiLU, QTable, QTanh

__all__ = [
    "LayerConfig",
    "as_config",
    "FORMAT_KEYS",
    "OPTION_KEYS",
    "LEARNABLE_KEYS",
    "TensorQuantizer",
    "QuantizedModule",
    "QLinear",
    "QConv2d",
    "QBatchNorm2d",
    "fold_batchnorm",
    "QReLU",
    "QReLU6",
    "QLeakyReLU",
    "QAdd",
    "QMaxPool2d",
    "QAvgPool2d",
    "QFlatten",
    "QBatchNorm1d",
    "QLayerNorm",
    "QGlobalAvgPool2d",
    "QCat",
    "QClamp",
    "QSub",
    "QMul",
    "QZeroPad2d",
    "QUpsample",
    "QMatMul",
    "QPermute",
    "QReshape",
    "QTable",
    "QSoftmax",
    "QSigmoid",
    "QTanh",
    "QSiLU",
    "QGELU",
    "QHardsigmoid",
    "QHardswish",
    "QConv1d",
    "QMaxPool1d",
    "QAvgPool1d",
    "freeze",
    "refresh_compile_plan",
    "compile_model",
    "CompilePlanError",
    "set_track_overflow",
    "reset_overflow_counts",
    "product_type",
    "auto_accumulator",
    "minifloat_hull",
    "lmul_product_type",
]
