"""The zoo's model builders, one per compressed-network family (networks.md section 1).

Builders with a `prune` argument make that fraction of every hidden layer's filters all-zero
(structured pruning, as STQ does); the default 0 leaves the model exactly as without it."""

from __future__ import annotations

import numpy as np

from ..testing import random_models
from .builder import Net


def _finish(net: Net, classes: int, doc: str, code: str = "binary"):
    net.logits(classes, code=code)
    return net.model(doc)


def ternary_ttq(seed: int = 0, size: int = 12, widths=(16, 24), dense: int = 32, prune: float = 0.0):
    """EC2T / TTQ: ternary weights {-w_n, 0, +w_p} (two scales per layer, 40% zeros), binary
    activations (BatchNorm -> Sign), int8 input."""
    net = Net(seed, "ternary_ttq")
    net.input_qdq((3, size, size), "int8")
    for i, w in enumerate(widths):
        net.conv(w, 3, 1, 1, code="ternary", prune=prune, scope=f"conv{i}")
        net.bn_sign("Sign", scope=f"bn{i}")
        if i == 0:
            net.maxpool(2, scope="pool0")
    net.dense(dense, code="ternary", prune=prune, scope="fc0")
    net.bn_sign("Sign", scope="bn_fc0")
    return _finish(net, 10, f"ternary_ttq seed={seed}")


def ternary_qonnx(seed: int = 0, size: int = 10, widths=(12, 16)):
    """TWN as QONNX writes it: 2-bit narrow Quant of latent weights ({-1, 0, +1} * alpha_o), an
    8-bit Quant on the input, a 2-bit Quant activation after the first layer, BipolarQuant after
    the others."""
    net = Net(seed, "ternary_qonnx")
    net.input_quant((2, size, size), bits=8)
    for i, w in enumerate(widths):
        net.conv(w, 3, 1, 1, code="ternary_q", scope=f"conv{i}")
        if i == 0:
            net.quant_act(2, scope=f"act{i}")
        else:
            net.bn_sign("BipolarQuant", scope=f"bn{i}")
    net.dense(24, code="ternary_q", scope="fc0")
    net.bn_sign("BipolarQuant", scope="bn_fc0")
    return _finish(net, 10, f"ternary_qonnx seed={seed}")


def ternary_ec2t(seed: int = 0, size: int = 8, widths=(12, 16), prune: float = 0.0):
    """EC2T: ternary weights with real (int8, QDQ) activations between the layers."""
    net = Net(seed, "ternary_ec2t")
    net.input_qdq((3, size, size), "uint8", zero_point=0)
    for i, w in enumerate(widths):
        net.conv(w, 3, 1, 1, code="ternary", prune=prune, scope=f"conv{i}")
        net.qdq(-4, scope=f"requant{i}", relu=bool(i % 2))
    net.gap()
    net.requant_stream()
    return _finish(net, 10, f"ternary_ec2t seed={seed}", code="int")


def dabn(seed: int = 0, size: int = 12, widths=(16, 16), prune: float = 0.0):
    """DABN: two-scale binary weights +a_o / -b_o per filter, binary activations."""
    net = Net(seed, "dabn")
    net.input_qdq((3, size, size), "int8")
    for i, w in enumerate(widths):
        net.conv(w, 3, 1 + (i == 1), 1, code="two_scale", prune=prune, scope=f"conv{i}")
        net.bn_sign("Sign", scope=f"bn{i}")
    net.dense(32, code="two_scale", prune=prune, scope="fc0")
    net.bn_sign("Sign", scope="bn_fc0")
    return _finish(net, 10, f"dabn seed={seed}")


def w1a2(seed: int = 0, size: int = 12, widths=(16, 24), prune: float = 0.0):
    """Multi-bit activations: 2-bit MultiThreshold (3 steps, levels -1.5..1.5) after binary
    convolutions (FINN / QONNX W1A2)."""
    net = Net(seed, "w1a2")
    net.input_qdq((3, size, size), "int8")
    for i, w in enumerate(widths):
        net.conv(w, 3, 1, 1, code="binary", prune=prune, scope=f"conv{i}")
        net.multithreshold(3, 1.0, -1.5, scope=f"act{i}")
        if i == 0:
            net.maxpool(2, scope="pool0")
    net.dense(32, code="binary", prune=prune, scope="fc0")
    net.multithreshold(3, 0.5, 0.0, scope="act_fc0")  # unsigned 2-bit: 0, 0.5, 1, 1.5
    return _finish(net, 10, f"w1a2 seed={seed}")


def abc_fused(seed: int = 0, size: int = 10, widths=(12, 16), prune: float = 0.0):
    """ABC-Net with the weight bases fused by the exporter: each layer's weights are
    sum_m alpha_m B_m in one multi-level tensor; 2-bit (thermometer) activations."""
    net = Net(seed, "abc_fused")
    net.input_qdq((3, size, size), "int8")
    for i, w in enumerate(widths):
        net.conv(w, 3, 1, 1, code="multi_base", prune=prune, scope=f"conv{i}")
        net.multithreshold(3, 2.0, -3.0, scope=f"act{i}")  # the sum of 3 bipolar bases
    net.dense(24, code="multi_base", prune=prune, scope="fc0")
    net.bn_sign("Sign", scope="bn_fc0")
    return _finish(net, 10, f"abc_fused seed={seed}")


def abc_explicit(seed: int = 0, size: int = 10, widths=(12, 16), bases: int = 3):
    """ABC-Net written base by base: y = sum_m alpha_m * Conv(x, B_m) (separate binary
    convolutions, Mul, Add), binary activations."""
    net = Net(seed, "abc_explicit")
    net.input_qdq((3, size, size), "int8")
    net.conv(widths[0], 3, 1, 1, code="binary", scope="conv0")
    net.bn_sign("Sign", scope="bn0")
    _explicit_bases(net, widths[1], bases, "conv1")
    net.bn_sign("Sign", scope="bn1")
    return _finish(net, 10, f"abc_explicit seed={seed}")


def _explicit_bases(net: Net, out_ch: int, bases: int, scope: str):
    from .builder import Pending, pow2

    x_t, x_step = net.t, net.step
    coeffs = [1, 2, 4, 3, 5][:bases]
    e = int(net.rng.integers(3, 6))
    total, acc = None, None
    for m, cm in enumerate(coeffs):
        net.t, net.step = x_t, x_step
        net.conv(out_ch, 3, 1, 1, code="binary", scope=f"{scope}_base{m}", pow2=True)
        pend = net.pending
        # Mul by alpha_m / (this conv's own alpha): the base's coefficient cm * 2**-e
        factor = cm * pow2(-e) / (pend.unit / x_step)
        net.t = net.node("Mul", [net.t, net.const(f"{scope}_alpha{m}", factor.reshape(-1, 1, 1).astype(np.float32))],
                         f"{scope}_alpha{m}")
        contrib = pend.A * cm
        acc = contrib if acc is None else acc + contrib
        total = net.t if total is None else net.node("Add", [total, net.t], f"{scope}_sum{m}")
    net.t = total
    net.pending = Pending(acc, np.full(out_ch, pow2(-e) * x_step))


def pabt(seed: int = 0, size: int = 10, width: int = 12, out_ch: int = 16, act_bases: int = 3,
         weight_bases: int = 2, keep=None, prune: float = 0.0):
    """PaBT: activation bases A_n = sign(x - v_n) and weight bases B_m; the layer sums
    alpha_m beta_n Conv(A_n, B_m) over the (m, n) pairs that survived pruning."""
    from .builder import Pending, pow2

    net = Net(seed, "pabt")
    net.input_qdq((3, size, size), "int8")
    net.conv(width, 3, 1, 1, code="binary", prune=prune, scope="conv0", pow2=True)
    A, u = net.pending.A, net.pending.unit
    rng = net.rng
    pairs = [(m, n) for m in range(weight_bases) for n in range(act_bases)]
    if keep is None:
        keep = [p for p in pairs if rng.random() < 0.6] or pairs[:1]
    t = net._boundaries(A, act_bases)
    x = net.t
    beta = [pow2(-int(b)) for b in rng.integers(0, 3, act_bases)]
    alpha = [pow2(-int(a)) * c for a, c in zip(rng.integers(0, 3, weight_bases), (1, 3, 5, 7))]
    planes = []
    shape = (1, -1, 1, 1)
    for n in range(act_bases):
        v = (u * (t[:, n] + 0.5)).reshape(-1, 1, 1).astype(np.float32)
        d = net.node("Sub", [x, net.const(f"shift{n}", v)], f"shift{n}")
        planes.append(net.node("Sign", [d], f"base_sign{n}"))
    acts = [np.where(A >= (t[:, n] + 1).reshape(shape), 1, -1) for n in range(act_bases)]
    B = [rng.choice([-1, 1], (out_ch, width, 3, 3)) for _ in range(weight_bases)]
    total, acc = None, None
    for (m, n) in keep:
        y = net.node("Conv", [planes[n], net.const(f"B{m}_for_A{n}", B[m].astype(np.float32))], f"conv1_m{m}_n{n}",
                     kernel_shape=[3, 3], pads=[1] * 4, strides=[1, 1])
        k = alpha[m] * beta[n]
        y = net.node("Mul", [y, net.const(f"coef_m{m}_n{n}", np.array(k, np.float32))], f"coef_m{m}_n{n}")
        from .builder import conv_int
        contrib = conv_int(acts[n], B[m], 1, 1).astype(np.float64) * k
        acc = contrib if acc is None else acc + contrib
        total = y if total is None else net.node("Add", [total, y], f"pair_sum_m{m}_n{n}")
    unit = pow2(-6)
    net.t = total
    net.pending = Pending(np.rint(acc / unit).astype(np.int64), np.full(out_ch, unit))
    assert np.array_equal(net.pending.A * unit, acc)
    net.layers.append({"kind": "pabt", "pairs_kept": [list(p) for p in keep], "pairs_total": len(pairs)})
    net.bn_sign("Sign", scope="bn1")
    return _finish(net, 10, f"pabt seed={seed} pairs={keep}")


def hbn(seed: int = 0, size: int = 16, widths=(12, 16, 16), prune: float = 0.0):
    """Hybrid Binary Network: int8 first layer (QDQ, int8 weights), a binary-weight layer on int8
    inputs, binary layers, and an int8 last layer."""
    net = Net(seed, "hbn")
    net.input_qdq((3, size, size), "uint8", zero_point=0)
    net.conv(widths[0], 3, 1, 1, code="int", prune=prune, scope="conv0_int8", range=127)
    net.qdq(-4, scope="requant0")
    net.conv(widths[1], 3, 2, 1, code="binary", prune=prune, scope="conv1_binary_weights_int8_input")
    net.bn_sign("Sign", scope="bn1")
    net.conv(widths[2], 3, 1, 1, code="binary", prune=prune, scope="conv2")
    net.qdq(-3, scope="requant2")
    net.gap()
    net.requant_stream()
    return _finish(net, 10, f"hbn seed={seed}", code="int")


def xnet(seed: int = 0, size: int = 12, widths=(16, 32, 32), degree: int = 4):
    """X-Net: binary layers with expander connectivity (each output channel reads `degree`
    input channels, 2 of the 3 input channels in the first layer; every other k x k kernel is zero)."""
    net = Net(seed, "xnet")
    net.input_qdq((3, size, size), "int8")
    net.conv(widths[0], 3, 1, 1, code="expander", degree=2, scope="conv0")  # on integer inputs: channel lists
    net.bn_sign("Sign", scope="bn0")
    for i, w in enumerate(widths[1:], 1):
        net.conv(w, 3, 1 + (i == 1), 1, code="expander", degree=degree, scope=f"conv{i}")
        net.bn_sign("Sign", scope=f"bn{i}")
    return _finish(net, 10, f"xnet seed={seed} degree={degree}")


def bireal(seed: int = 0, size: int = 16, widths=(8, 16), frac: int = 8, sign: str = "BipolarQuant",
           branch: str = "dyadic", prune: float = 0.0):
    """Bi-Real Net: every binary convolution has a real-valued shortcut (a fixed-point stream);
    downsampling shortcuts are AvgPool 2x2 + 1x1 convolution (int8 weights).
    branch "dyadic": folded BatchNorms (Mul, Add) on a 2**-frac grid, exact in float32;
    "batchnorm": BatchNormalization with float parameters (bnnc's fixed point then rounds)."""
    net = Net(seed, "bireal")
    net.input_qdq((3, size, size), "int8")
    net.conv(widths[0], 3, 1, 1, code="int", range=3, scope="stem")
    if branch == "batchnorm":
        net.to_stream = lambda frac, scope: net.bn_stream(scope)  # noqa: E731
    s = net.to_stream(frac, scope="stem_bn")
    k = 0
    for stage, w in enumerate(widths):
        for block in range(2):
            down = stage > 0 and block == 0
            net.sign_of(s, sign, scope=f"sign{k}")
            net.conv(w, 3, 2 if down else 1, 1, code="binary", prune=prune, pow2=True, scope=f"conv{k}")
            net.to_stream(frac, scope=f"bn{k}")
            branch = net.stream()
            if down:
                net.set_stream(s)
                net.avgpool(2, scope=f"down_pool{k}")
                net.requant_stream(7, scope=f"down_quant{k}", spread=True)
                net.conv(w, 1, 1, 0, code="int", range=3, scope=f"down_conv{k}")
                sc = net.to_stream(frac, scope=f"down_bn{k}")
                net.set_stream(branch)
            else:
                sc = s
            s = net.residual_add(sc, scope=f"add{k}")
            k += 1
    net.gap()
    net.requant_stream()
    return _finish(net, 10, f"bireal seed={seed}")


def resnet18_stq(seed: int = 0, size: int = 32, widths=(16, 32, 64, 128), prune: float = 0.4, frac: int = 8):
    """Binary ResNet-18 (CIFAR layout: 3x3 stem, 4 stages of 2 basic blocks) with STQ-style
    structured pruning: `prune` of the filters of every block's first convolution are all-zero
    (bnnc removes them and the matching input channels of the second convolution). The
    residual stream is fixed point; downsampling shortcuts are AvgPool + 1x1 int8 convolution."""
    net = Net(seed, "resnet18_stq", calibration=24)
    net.input_qdq((3, size, size), "int8")
    net.conv(widths[0], 3, 1, 1, code="int", range=3, scope="stem")
    s = net.to_stream(frac, scope="stem_bn")
    for stage, w in enumerate(widths):
        for block in range(2):
            down = stage > 0 and block == 0
            name = f"layer{stage + 1}.{block}"
            net.sign_of(s, "BipolarQuant", scope=f"{name}.sign1")
            net.conv(w, 3, 2 if down else 1, 1, code="binary", prune=prune, scope=f"{name}.conv1")
            net.bn_sign("BipolarQuant", scope=f"{name}.bn1")
            net.conv(w, 3, 1, 1, code="binary", pow2=True, scope=f"{name}.conv2")
            net.to_stream(frac, scope=f"{name}.bn2")
            branch = net.stream()
            if down:
                net.set_stream(s)
                net.avgpool(2, scope=f"{name}.down.pool")
                net.requant_stream(7, scope=f"{name}.down.quant", spread=True)
                net.conv(w, 1, 1, 0, code="binary", pow2=True, scope=f"{name}.down.conv")
                sc = net.to_stream(frac, scope=f"{name}.down.bn")
                net.set_stream(branch)
            else:
                sc = s
            s = net.residual_add(sc, scope=f"{name}.add")
    net.gap()
    net.requant_stream()
    return _finish(net, 10, f"resnet18_stq seed={seed} prune={prune}")


def tfc(seed: int = 0):
    """FINN's TFC: a binarized 784-64-64-64-10 MLP (bnnc.testing.random_models.tfc_model)."""
    return random_models.tfc_model(seed)


def cnv(seed: int = 0):
    """FINN's CIFAR-10 CNV (bnnc.testing.random_models.cnv_model)."""
    return random_models.cnv_model(seed)


def cnv_stq40(seed: int = 0, widths=(60, 60, 120, 120, 240, 240), dense=(480, 480), prune: float = 0.4,
              size: int = 32):
    """CNV (six valid 3x3 binary convs, MaxPool after the 2nd and 4th, two dense layers) with
    STQ-style structured pruning: `prune` of every hidden layer's filters are all-zero. The widths
    are multiples of 5, so 40% is exact: a middle layer keeps 0.6 x 0.6 = 36% of its weights,
    32 / 0.36 = 89x smaller than float32."""
    net = Net(seed, "cnv_stq40", calibration=24)
    net.input_qdq((3, size, size), "int8")
    for i, w in enumerate(widths):
        net.conv(w, 3, 1, 0, code="binary", prune=prune, scope=f"conv{i}")
        net.bn_sign("Sign", scope=f"bn{i}")
        if i in (1, 3):
            net.maxpool(2, scope=f"pool{i}")
    for j, f in enumerate(dense):
        net.dense(f, code="binary", prune=prune, scope=f"fc{j}")
        net.bn_sign("Sign", scope=f"bn_fc{j}")
    return _finish(net, 10, f"cnv_stq40 seed={seed} prune={prune}")
