"""The canonical frontend stage: ONNX -> ONNX rewrites of the forms real exporters write into the
forms bnnc's lowering reads, applied in order when a model is read.

Every rewrite is a pure function ModelProto -> ModelProto (the input is never modified) whose
docstring states what it preserves: unless said otherwise, the rewritten graph computes the same
float32 values as the original on every input.
"""

from __future__ import annotations

import onnx

from .bipolar_sign import bipolar_sign_from_offset_sign, bipolar_sign_from_where
from .channel_shuffle import channel_shuffle_to_gather
from .clamps_to_clip import clamps_to_clip
from .clip_before_sign import remove_clip_before_sign
from .constant_subgraphs import fold_constant_subgraphs
from .contrib_quantizers import contrib_quantizers_to_standard
from .dense_on_map import dense_on_map_to_pointwise_conv
from .dilated_conv import dilated_conv_to_dense_kernel
from .erf_gelu import erf_to_gelu
from .external_data import load_external_data
from .grouped_conv import split_convs_to_grouped_conv
from .keras_prelu import keras_prelu_to_prelu
from .layout_transposes import sink_layout_transposes
from .pool_ceil import pool_ceil_to_floor
from .nhwc_flatten import nhwc_flatten_into_dense
from .node_names import name_unnamed_nodes
from .one_d_as_two_d import lift_1d_to_2d
from .pad_into_window import merge_pads_into_windows
from .padded_add import add_into_concat_part
from .pass_through_ops import remove_pass_through_ops
from .pixel_moves import pixel_moves_to_space_depth
from .qdq_layout import dequantize_before_layout_ops
from .qcdq_clip import qcdq_clip_to_quant
from .qoperator import qoperator_to_qdq
from .round_quantizer import round_quantizer_to_quant
from .uniform_constants import scalarize_uniform_constants
from .unit_axis_windows import unit_axis_windows_to_1d
from .where_prelu import where_to_prelu
from .spatial_reduce import spatial_reduce_to_global_pool
from .ste_sign import simplify_ste_sign
from .ternary_sign import ternary_sign_to_threshold

# Applied in this order; each one sees the previous one's output.
REWRITES = (
    name_unnamed_nodes,
    contrib_quantizers_to_standard,
    qoperator_to_qdq,
    fold_constant_subgraphs,
    remove_pass_through_ops,
    unit_axis_windows_to_1d,
    lift_1d_to_2d,
    channel_shuffle_to_gather,
    pixel_moves_to_space_depth,
    dequantize_before_layout_ops,
    scalarize_uniform_constants,
    bipolar_sign_from_where,
    where_to_prelu,
    simplify_ste_sign,
    spatial_reduce_to_global_pool,
    keras_prelu_to_prelu,
    dense_on_map_to_pointwise_conv,
    sink_layout_transposes,
    simplify_ste_sign,  # again: in tf2onnx's NHWC form Transposes inside an estimator hid it before
    keras_prelu_to_prelu,  # again: tf2onnx puts Transposes inside a PReLU whose slopes vary per pixel
    erf_to_gelu,
    ternary_sign_to_threshold,
    nhwc_flatten_into_dense,
    split_convs_to_grouped_conv,
    add_into_concat_part,
    dilated_conv_to_dense_kernel,
    bipolar_sign_from_offset_sign,
    clamps_to_clip,
    remove_clip_before_sign,
    qcdq_clip_to_quant,
    round_quantizer_to_quant,
    merge_pads_into_windows,
    pool_ceil_to_floor,
)


def canonicalize(model: onnx.ModelProto, model_dir=None) -> onnx.ModelProto:
    """`model` rewritten into bnnc's canonical forms; external data is read from `model_dir`."""
    model = load_external_data(model, model_dir)
    for rewrite in REWRITES:
        model = rewrite(model)
    return model
