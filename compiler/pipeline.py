"""From an ONNX file to the lowered IR: the frontend, then the passes in order.

With `Options.verify_ir` (default: the environment variable BNNC_VERIFY_IR=1, which the tests
set) `ir.verify` checks the graph after the frontend and after every pass."""

from __future__ import annotations

import os

from dataclasses import dataclass
from typing import Optional

from . import ir, progress
from .canonical import canonicalize
from .lower import FRAC_BITS, lower
from .onnx_loader import check_graph, load, read_model
from .passes.find_sparse_connectivity import find_sparse_connectivity
from .passes.fold_batchnorm_into_thresholds import fold_batchnorm_into_thresholds
from .passes.merge_activation_planes import merge_activation_planes
from .passes.merge_summed_convs import merge_summed_convs
from .passes.quantize_input import InputAffine, quantize_input
from .passes.requantize_level_steps import requantize_level_steps
from .passes.strip_pruned_channels import strip_pruned_channels


@dataclass
class Options:
    input_scale: Optional[float] = None
    input_range: Optional[tuple] = None
    frac_bits: int = FRAC_BITS  # fixed-point grid 2**-frac_bits of residual / real-valued streams
    verify_ir: Optional[bool] = None  # ir.verify after every step; None: BNNC_VERIFY_IR=1
    input_affine: Optional[InputAffine] = None  # per-channel float32 ops from the device's integers to the input
    weight_bits: Optional[dict] = None  # real-valued weights: {ONNX node name or "*": bits}, a width for a bound


PASSES = (merge_activation_planes, merge_summed_convs, quantize_input, fold_batchnorm_into_thresholds, strip_pruned_channels,
          find_sparse_connectivity, requantize_level_steps)


def frontend(model, options: Options = Options()) -> ir.Graph:
    """ONNX ModelProto -> IR with float32 epilogue chains (nothing folded yet). The exporter's
    forms are first rewritten into canonical ones (a copy: `model` itself is not changed)."""
    check_graph(model)  # the file's own structure, before the canonical rewrites read it
    return lower(load(canonicalize(model)), options.input_scale, options.input_range, options.frac_bits,
                 options.input_affine, options.weight_bits)


def compile_graph(model, options: Options = Options()) -> ir.Graph:
    """ONNX ModelProto -> IR after every pass: what the reference and the backends run."""
    verify = options.verify_ir if options.verify_ir is not None else os.environ.get("BNNC_VERIFY_IR") == "1"
    with progress.step("lowering the model (canonical rewrites, frontend)"):
        g = frontend(model, options)
    if verify:
        ir.verify(g)
    for p in PASSES:
        with progress.step(f"pass {p.__name__}"):
            g = p(g)
        if verify:
            ir.verify(g)
    return g


def compile_file(path, options: Options = Options()):
    """(ModelProto as the file holds it, external data read in; lowered IR) for an ONNX file. The
    ModelProto is the original that `bnnc verify` runs, not the canonical rewrite."""
    with progress.step(f"reading {path}"):
        model = read_model(path)
    return model, compile_graph(model, options)
