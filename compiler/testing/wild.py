"""The shared real-world models (`../shared/models/wild/`, see its README) with the input each
one is deployed on, as `bnnc` flags: image models take uint8 pixels q with the training code's
per-channel normalisation x = (q / 255 - mean) / std; hls4ml's jet tagger takes ap_fixed<16,6>
features (integers times 2^-10); the UNSW-NB15 MLP declares its BIPOLAR input itself."""

from __future__ import annotations

from pathlib import Path

IMAGENET = ("--input-range", "0:255", "--input-scale", "1/255", "--input-mean", "0.485,0.456,0.406",
            "--input-std", "0.229,0.224,0.225")
CIFAR = ("--input-range", "0:255", "--input-scale", "1/255", "--input-mean", "0.4914,0.4822,0.4465",
         "--input-std", "0.2470,0.2435,0.2616")
BREVITAS_IMAGENET = ("--input-range", "0:255", "--input-scale", "1/255", "--input-mean", "0.485,0.456,0.406",
                     "--input-std", "0.226,0.226,0.226")
AP_FIXED_16_6 = ("--input-scale", "0.0009765625", "--input-range", "-32768:32767")

# name -> the input flags its README declares
WILD_MODELS = {
    "birealnet18": IMAGENET,
    "birealnet18_dynamo_extdata": IMAGENET,
    "brevitas_mobilenet_v1_4w4a": BREVITAS_IMAGENET,
    "brevitas_qcdq_ternres": CIFAR,
    "larq_quicknet_small": IMAGENET,
    "larq_quicknet_small_nchw": IMAGENET,
    "mainsub_nin": CIFAR,
    "ttq_squeezenet": IMAGENET,
    "zoo_qkeras_jettagging": AP_FIXED_16_6,
    "zoo_unsw_nb15_mlp_w2a2": (),
}


def wild_dir() -> Path:
    """`../shared/models/wild` seen from the repository root (where tests and benches run)."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "models" / "wild"


def options_of(flags: tuple):
    """pipeline.Options for a flag tuple of WILD_MODELS (the CLI's own parsing)."""
    from ..api import lowering_options
    from ..cli import _attach_negative_values, build_parser

    a = build_parser().parse_args(_attach_negative_values(["report", "model.onnx", *flags]))
    return lowering_options(a.input_scale, a.input_range, a.input_offset, a.input_mean, a.input_std, a.frac_bits,
                            a.weight_bits)
