"""bnnc: a deployment compiler for compressed (binary, ternary, multi-bit, pruned) neural networks.

    import bnnc
    m = bnnc.compile("model.onnx", target="c")   # or an onnx.ModelProto; any target of `bnnc`
    y = m.run(x)                                 # outputs (N, ...) for inputs (N, ...)
    print(m.verify(samples=100).text)            # original vs reference vs target
    print(m.report().text); m.write("out/")

Errors in the user's input raise `bnnc.Error` with the message `bnnc` prints. Progress of long
steps goes to the logger "bnnc"; `bnnc.set_verbosity(bnnc.NORMAL)` prints it on stderr.
"""

__version__ = "0.1.0"

from .api import Compiled, Error, Report, Verification, compile  # noqa: E402
from .progress import NORMAL, QUIET, VERBOSE, set_verbosity  # noqa: E402
from .targets import TARGETS  # noqa: E402

__all__ = ["compile", "Compiled", "Error", "Report", "Verification", "set_verbosity", "QUIET", "NORMAL", "VERBOSE",
           "TARGETS", "__version__"]
