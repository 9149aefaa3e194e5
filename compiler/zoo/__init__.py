"""bnnc.zoo: seeded builders that write an ONNX model of every network family bnnc deploys.

    from bnnc import zoo
    model = zoo.build("dabn", seed=3)        # an onnx.ModelProto
    x = zoo.inputs(model, 20, seed=0)        # float32 inputs spread over its input grid

Each family model is built so that onnxruntime (float32) and bnnc's exact integer execution
agree on every input (bnnc.zoo.builder explains how). Tests, benchmarks and
`bnnc demo --zoo NAME` use them.
"""

from __future__ import annotations

import numpy as np

from . import families

# name -> (builder, one-line description)
MODELS = {
    "tfc": (families.tfc, "FINN TFC: binarized MLP 784-64-64-64-10"),
    "cnv": (families.cnv, "FINN CNV: binarized CIFAR-10 CNN (59.5M MACs)"),
    "cnv-stq40": (families.cnv_stq40, "CNV with 40% structured filter pruning (STQ)"),
    "resnet18-stq": (families.resnet18_stq, "binary ResNet-18, fixed-point residual stream, 40% pruned"),
    "bireal": (families.bireal, "Bi-Real Net: real-valued shortcuts around every binary conv"),
    "ternary-ttq": (families.ternary_ttq, "ternary weights {-w_n, 0, +w_p}, binary activations"),
    "ternary-qonnx": (families.ternary_qonnx, "TWN as QONNX: 2-bit Quant weights, BipolarQuant"),
    "ternary-ec2t": (families.ternary_ec2t, "ternary weights, int8 activations (EC2T)"),
    "dabn": (families.dabn, "DABN: two-scale binary weights +a_o / -b_o"),
    "w1a2": (families.w1a2, "binary weights, 2-bit MultiThreshold activations"),
    "abc-fused": (families.abc_fused, "ABC-Net: fused multi-level weights (decoded into bases)"),
    "abc-explicit": (families.abc_explicit, "ABC-Net: one convolution per weight base, summed"),
    "pabt": (families.pabt, "PaBT: activation x weight base pairs, some pairs pruned"),
    "hbn": (families.hbn, "Hybrid BNN: int8 first/last layers, binary weights on int8 inputs"),
    "xnet": (families.xnet, "X-Net: binary layers with expander connectivity"),
}

FAMILIES = ("ternary-ttq", "ternary-qonnx", "ternary-ec2t", "dabn", "w1a2", "abc-fused", "abc-explicit",
            "pabt", "hbn", "xnet", "bireal", "resnet18-stq", "cnv-stq40")


def names() -> list:
    return list(MODELS)


def build(name: str, seed: int = 0, **kwargs):
    """The ONNX model `name` (see MODELS) for `seed`; kwargs go to the builder (sizes)."""
    from ..errors import BnncError

    if name not in MODELS:
        raise BnncError(f"unknown zoo model '{name}' (known: {', '.join(MODELS)})")
    return MODELS[name][0](seed, **kwargs)


def inputs(model, n: int, seed: int = 0) -> np.ndarray:
    """n float32 inputs spread over the model's input grid (what `bnnc verify` samples)."""
    from .. import driver
    from ..pipeline import frontend

    return driver.random_samples(frontend(model), n, seed)
