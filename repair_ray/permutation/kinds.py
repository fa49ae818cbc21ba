"""What the derivation knows of modules and ops, by how they treat channels: elementwise (the
layout passes through), spatial (slides over the axes after the channels), reductions, reshapes,
and ops that make no tensor. Anything not named here, and not a layer :mod:`.derive` has a rule
for, is refused as soon as a free channel axis reaches it.
"""

from __future__ import annotations

from torch import nn

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Threshold, nn.LogSigmoid,
)  # fmt: skip
ELEMENTWISE_MODULES = (
    *ACTIVATIONS, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.Softmax, nn.LogSoftmax, nn.Softmax2d,
)  # fmt: skip
SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.LPPool2d,
)  # fmt: skip
NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm, nn.GroupNorm)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

UNARY = {
    "relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh",
    "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "softsign", "logsigmoid", "dropout",
    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "contiguous", "clone",
    "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as", "abs", "neg", "exp", "log",
    "sqrt", "rsqrt", "square", "sin", "cos", "erf", "clamp", "clamp_min", "clamp_max", "clip", "sign",
    "softmax", "log_softmax", "nan_to_num", "reciprocal", "floor", "ceil", "round", "sigmoid_", "tanh_",
    "stochastic_depth", "requires_grad_", "cpu", "cuda", "hardswish_", "silu_", "gelu_", "threshold",
}  # fmt: skip
BINARY = {
    "add", "sub", "mul", "truediv", "div", "floordiv", "maximum", "minimum", "where", "iadd", "isub",
    "imul", "itruediv", "add_", "mul_", "sub_", "div_", "rsub", "pow", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "and_", "or_", "addcmul", "lerp", "masked_fill", "fmod", "remainder",
}  # fmt: skip
REDUCE = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "prod", "norm", "nansum", "nanmean"}
SPATIAL = {
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate", "upsample", "upsample_nearest",
    "upsample_bilinear",
}  # fmt: skip
RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
NON_TENSOR = {"size", "dim", "numel", "getattr", "len", "__len__", "ndimension", "nelement"}

# Kinds of point, best first, for activation matching: a nonlinearity's output, a norm's, an affine layer's.
POINT_KINDS = ("activation", "norm", "affine")
